import keras
from keras import ops


@keras.saving.register_keras_serializable(package="gemma3_tf")
class RMSNormalization(keras.layers.Layer):
    """Gemma's RMSNorm: `x * rsqrt(mean(x^2) + eps) * (1 + scale)`.

    Computed in float32 whatever the dtype policy: bfloat16 loses too much in
    the mean of squares. `scale` starts at zero, so a fresh layer is a pure
    normalization (checkpoints store `scale`, not `1 + scale`).
    """

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(input_shape[-1],), initializer="zeros"
        )

    def call(self, x):
        x = ops.cast(x, "float32")
        variance = ops.mean(ops.square(x), axis=-1, keepdims=True)
        x = x * ops.rsqrt(variance + self.epsilon)
        x = x * (1.0 + ops.cast(self.scale, "float32"))
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
