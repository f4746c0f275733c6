import keras
from keras import ops


@keras.saving.register_keras_serializable(package="gemma3_tf")
class Gemma3InterleaveEmbeddings(keras.layers.Layer):
    """Writes image embeddings into the text embedding sequence at `vision_indices`.

    `vision_indices` is zero-padded for prompts with fewer images than the
    batch maximum; position 0 is always BOS, so whatever lands there is put back.
    """

    def __init__(self, num_vision_tokens_per_image, **kwargs):
        super().__init__(**kwargs)
        self.num_vision_tokens_per_image = num_vision_tokens_per_image

    def call(self, image_embeddings, text_embeddings, vision_indices):
        """image_embeddings [B*N, P, D], text_embeddings [B, T, D], vision_indices [B, N*P] -> [B, T, D]."""
        batch, length, dim = ops.shape(text_embeddings)[0], ops.shape(text_embeddings)[1], text_embeddings.shape[-1]
        flat_text = ops.reshape(text_embeddings, (-1, dim))
        flat_images = ops.cast(ops.reshape(image_embeddings, (-1, dim)), flat_text.dtype)
        row_starts = ops.arange(batch, dtype="int32") * length  # [B]
        flat_indices = ops.reshape(ops.cast(vision_indices, "int32") + row_starts[:, None], (-1, 1))
        first_tokens = ops.take(flat_text, row_starts, axis=0)
        merged = ops.scatter_update(flat_text, flat_indices, flat_images)
        merged = ops.scatter_update(merged, row_starts[:, None], first_tokens)
        return ops.reshape(merged, (batch, length, dim))

    def compute_output_shape(self, image_embeddings_shape, text_embeddings_shape, vision_indices_shape):
        return text_embeddings_shape

    def get_config(self):
        return {**super().get_config(), "num_vision_tokens_per_image": self.num_vision_tokens_per_image}
