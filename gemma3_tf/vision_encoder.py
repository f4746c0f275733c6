"""SigLIP vision tower of Gemma 3: ViT -> average pool -> RMSNorm -> projection to the text width.

Layer names, attribute names and class names follow keras-hub's
`Gemma3VisionEncoder`: Keras keys `.weights.h5` entries by them (class names
for layers inside lists), and keeping them lets the weights of either load
into the other.
"""

import keras
from keras import ops

from gemma3_tf import architecture
from gemma3_tf.layers.rms_normalization import RMSNormalization


@keras.saving.register_keras_serializable(package="gemma3_tf")
class Gemma3VisionEncoder(keras.Model):
    """Images [B, N, S, S, 3] in [-1, 1] -> image embeddings [B * N, num_vision_tokens_per_image, output_dim]."""

    def __init__(
        self,
        image_size,
        patch_size,
        num_heads,
        hidden_dim,
        num_layers,
        intermediate_dim,
        output_dim,
        pool_size=4,
        layer_norm_epsilon=1e-6,
        dtype=None,
        **kwargs,
    ):
        if image_size % patch_size or (image_size // patch_size) % pool_size:
            raise ValueError(
                f"`image_size` ({image_size}) must be a multiple of `patch_size` ({patch_size}) "
                f"times `pool_size` ({pool_size})."
            )
        images = keras.Input(shape=(None, image_size, image_size, 3), name="images")
        x = Gemma3VisionEncoderBlock(
            image_size=image_size,
            patch_size=patch_size,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            intermediate_dim=intermediate_dim,
            layer_norm_epsilon=layer_norm_epsilon,
            dtype=dtype,
            name="image_encoder",
        )(images)
        x = Gemma3VisionAveragePooling(
            image_size=image_size, patch_size=patch_size, pool_size=pool_size, dtype=dtype, name="pooling"
        )(x)
        x = Gemma3VisionOutput(
            output_dim=output_dim, layer_norm_epsilon=layer_norm_epsilon, dtype=dtype, name="vision_output_encoder"
        )(x)
        super().__init__(inputs=images, outputs=x, **kwargs)
        if dtype is not None:  # Functional models leave their own policy at the global default
            self.dtype_policy = keras.dtype_policies.get(dtype)
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.intermediate_dim = intermediate_dim
        self.output_dim = output_dim
        self.pool_size = pool_size
        self.layer_norm_epsilon = layer_norm_epsilon
        self.num_vision_tokens_per_image = architecture.tokens_per_image(image_size, patch_size, pool_size)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "intermediate_dim": self.intermediate_dim,
            "output_dim": self.output_dim,
            "pool_size": self.pool_size,
            "layer_norm_epsilon": self.layer_norm_epsilon,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="gemma3_tf")
class Gemma3VisionEncoderBlock(keras.layers.Layer):
    """Patch embedding + position embedding, pre-norm ViT blocks, final LayerNorm. [B, N, S, S, 3] -> [B*N, patches, W]."""

    def __init__(self, image_size, patch_size, hidden_dim, num_layers, num_heads, intermediate_dim,
                 layer_norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        # Sublayers in keras-hub's order: its `.lora.h5` files name a layer by its index in the order Keras
        # tracks them.
        self.encoder_layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="encoder_layer_norm"
        )
        self.vision_embeddings = Gemma3VisionEmbedding(
            image_size, patch_size, hidden_dim, dtype=self.dtype_policy, name="encoder_embeddings"
        )
        self.resblocks = [
            Gemma3VisionEncoderLayer(num_heads, intermediate_dim, layer_norm_epsilon,
                                     dtype=self.dtype_policy, name=f"encoder_block_{i}")
            for i in range(num_layers)
        ]

    def build(self, input_shape):
        self.vision_embeddings.build((None, self.image_size, self.image_size, 3))
        for block in self.resblocks:
            block.build((None, None, self.hidden_dim))
        self.encoder_layer_norm.build((None, None, self.hidden_dim))

    def call(self, images):
        images = ops.reshape(images, (-1, self.image_size, self.image_size, 3))
        x = self.vision_embeddings(images)
        for block in self.resblocks:
            x = block(x)
        return self.encoder_layer_norm(x)

    def compute_output_shape(self, input_shape):
        return (None, (self.image_size // self.patch_size) ** 2, self.hidden_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "layer_norm_epsilon": self.layer_norm_epsilon,
        }


@keras.saving.register_keras_serializable(package="gemma3_tf")
class Gemma3VisionEmbedding(keras.layers.Layer):
    """Patchify (a Conv2D with kernel = stride = patch_size) plus a learned embedding per patch position."""

    def __init__(self, image_size, patch_size, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embedding = keras.layers.Conv2D(
            hidden_dim, kernel_size=patch_size, strides=patch_size, padding="valid",
            dtype=self.dtype_policy, name="embedding_conv",
        )
        self.position_embedding = keras.layers.Embedding(
            self.num_patches, hidden_dim, dtype=self.dtype_policy, name="position_embedding"
        )

    def build(self, input_shape):
        self.patch_embedding.build(input_shape)
        self.position_embedding.build((1, self.num_patches))

    def call(self, images):
        # The Conv2D holds the weights (keras-hub's checkpoint layout) but is applied as the matmul it is:
        # oneDNN's Conv2D (on by default on AVX-512 cloud CPUs) returns its input unchanged for an empty
        # batch, so a request with zero images failed eagerly ("Incompatible shapes: [0,28,28,3] vs. [8]").
        grid, patch = self.image_size // self.patch_size, self.patch_size
        patches = ops.reshape(images, (-1, grid, patch, grid, patch, 3))
        patches = ops.transpose(patches, (0, 1, 3, 2, 4, 5))  # the kernel's (row, column, channel) order
        patches = ops.reshape(patches, (-1, self.num_patches, patch * patch * 3))
        kernel = ops.reshape(self.patch_embedding.kernel, (patch * patch * 3, self.hidden_dim))
        x = ops.matmul(patches, ops.cast(kernel, patches.dtype)) + ops.cast(self.patch_embedding.bias, patches.dtype)
        return x + ops.cast(self.position_embedding.embeddings, x.dtype)[None]

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "patch_size": self.patch_size,
                "hidden_dim": self.hidden_dim}


@keras.saving.register_keras_serializable(package="gemma3_tf")
class Gemma3VisionAttention(keras.layers.Layer):
    """Bidirectional multi-head self-attention over the patches of one image."""

    def __init__(self, hidden_dim, num_heads, **kwargs):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(f"`hidden_dim` ({hidden_dim}) must be divisible by `num_heads` ({num_heads}).")
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        for name in ("query_proj", "key_proj", "value_proj", "out_proj"):
            setattr(self, name, keras.layers.Dense(hidden_dim, dtype=self.dtype_policy, name=name))

    def build(self, input_shape):
        for dense in (self.query_proj, self.key_proj, self.value_proj, self.out_proj):
            dense.build((None, None, self.hidden_dim))

    def _split_heads(self, x):
        return ops.reshape(x, (ops.shape(x)[0], -1, self.num_heads, self.head_dim))

    def call(self, x):
        query = self._split_heads(self.query_proj(x)) * ops.cast(self.head_dim**-0.5, x.dtype)
        key = self._split_heads(self.key_proj(x))
        value = self._split_heads(self.value_proj(x))
        logits = ops.cast(ops.einsum("bqnh,bknh->bnqk", query, key), "float32")
        probs = ops.cast(ops.softmax(logits, axis=-1), x.dtype)
        output = ops.einsum("bnqk,bknh->bqnh", probs, value)
        return self.out_proj(ops.reshape(output, (ops.shape(x)[0], -1, self.hidden_dim)))

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim, "num_heads": self.num_heads}


@keras.saving.register_keras_serializable(package="gemma3_tf")
class Gemma3VisionEncoderLayer(keras.layers.Layer):
    """Pre-LayerNorm ViT block: x + attn(ln1(x)), then x + mlp(ln2(x)) with tanh-GELU."""

    def __init__(self, num_heads, intermediate_dim, layer_norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.layer_norm_epsilon = layer_norm_epsilon

    def build(self, input_shape):
        hidden_dim = input_shape[-1]
        policy = self.dtype_policy
        self.attn = Gemma3VisionAttention(hidden_dim, self.num_heads, dtype=policy, name="multi_head_attention")
        self.layer_norm_1 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, dtype=policy,
                                                            name="layer_norm_1")
        self.mlp_dense_1 = keras.layers.Dense(self.intermediate_dim, dtype=policy, name="mlp_dense_1")
        self.mlp_dense_2 = keras.layers.Dense(hidden_dim, dtype=policy, name="mlp_dense_2")
        self.layer_norm_2 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, dtype=policy,
                                                            name="layer_norm_2")
        self.attn.build(input_shape)
        self.layer_norm_1.build(input_shape)
        self.mlp_dense_1.build(input_shape)
        self.mlp_dense_2.build((None, None, self.intermediate_dim))
        self.layer_norm_2.build(input_shape)

    def call(self, x):
        x = x + self.attn(self.layer_norm_1(x))
        hidden = keras.activations.gelu(self.mlp_dense_1(self.layer_norm_2(x)), approximate=True)
        return x + self.mlp_dense_2(hidden)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "intermediate_dim": self.intermediate_dim,
                "layer_norm_epsilon": self.layer_norm_epsilon}


@keras.saving.register_keras_serializable(package="gemma3_tf")
class Gemma3VisionAveragePooling(keras.layers.Layer):
    """Average-pools the patch grid by `pool_size`: [B, (S/p)^2, W] -> [B, (S/p/pool)^2, W]."""

    def __init__(self, image_size, patch_size, pool_size, **kwargs):
        super().__init__(**kwargs)
        self.image_size = image_size
        self.patch_size = patch_size
        self.pool_size = pool_size
        self.width = image_size // patch_size
        self.average_pooling = keras.layers.AveragePooling2D(
            pool_size, strides=pool_size, padding="valid", dtype=self.dtype_policy, name="average_pooling"
        )

    def call(self, x):
        hidden_dim = x.shape[-1]
        x = self.average_pooling(ops.reshape(x, (-1, self.width, self.width, hidden_dim)))
        return ops.reshape(x, (-1, (self.width // self.pool_size) ** 2, hidden_dim))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], (self.width // self.pool_size) ** 2, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "patch_size": self.patch_size,
                "pool_size": self.pool_size}


@keras.saving.register_keras_serializable(package="gemma3_tf")
class Gemma3VisionOutput(keras.layers.Layer):
    """RMSNorm (1 + w) and a bias-free projection of the pooled patches to the text width."""

    def __init__(self, output_dim, layer_norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = output_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        self.vision_soft_embedding_norm = RMSNormalization(
            layer_norm_epsilon, dtype=self.dtype_policy, name="vision_soft_embedding_norm"
        )
        self.vision_input_projection = keras.layers.Dense(
            output_dim, use_bias=False, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            dtype=self.dtype_policy, name="vision_input_projection",
        )

    def build(self, input_shape):
        self.vision_soft_embedding_norm.build(input_shape)
        self.vision_input_projection.build(input_shape)

    def call(self, x):
        return self.vision_input_projection(self.vision_soft_embedding_norm(x))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.output_dim)

    def get_config(self):
        return {**super().get_config(), "output_dim": self.output_dim, "layer_norm_epsilon": self.layer_norm_epsilon}
