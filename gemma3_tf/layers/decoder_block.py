import keras

from gemma3_tf.layers.attention import Gemma3Attention
from gemma3_tf.layers.projections import feedforward
from gemma3_tf.layers.rms_normalization import RMSNormalization


@keras.saving.register_keras_serializable(package="gemma3_tf")
class Gemma3DecoderBlock(keras.layers.Layer):
    """One transformer layer: norm -> attention -> [norm] -> +, norm -> gated GELU MLP -> [norm] -> +.

    Whether the layer is local (sliding window) is part of its config; the
    backbone hands it the matching attention mask. Sublayer names follow
    keras-hub's `Gemma3DecoderBlock`.
    """

    def __init__(
        self,
        hidden_dim,
        intermediate_dim,
        head_dim,
        num_query_heads,
        num_key_value_heads,
        query_head_dim_normalize=True,
        query_pre_attn_scalar=None,
        use_query_key_norm=True,
        use_post_ffw_norm=False,
        use_post_attention_norm=False,
        logit_soft_cap=None,
        use_sliding_window_attention=False,
        sliding_window_size=1024,
        rope_wavelength=10_000.0,
        rope_scaling_factor=1.0,
        layer_norm_epsilon=1e-6,
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.head_dim = head_dim
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.query_head_dim_normalize = query_head_dim_normalize
        self.query_pre_attn_scalar = query_pre_attn_scalar
        self.use_query_key_norm = use_query_key_norm
        self.use_post_ffw_norm = use_post_ffw_norm
        self.use_post_attention_norm = use_post_attention_norm
        self.logit_soft_cap = logit_soft_cap
        self.use_sliding_window_attention = use_sliding_window_attention
        self.sliding_window_size = sliding_window_size
        self.rope_wavelength = rope_wavelength
        self.rope_scaling_factor = rope_scaling_factor
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout

        def norm(name):
            return RMSNormalization(layer_norm_epsilon, dtype=self.dtype_policy, name=name)

        def dense(equation, output_dim, name):
            return keras.layers.EinsumDense(
                equation, output_shape=(None, output_dim), dtype=self.dtype_policy, name=name
            )

        # Sublayers in keras-hub's order: its `.lora.h5` files name a layer by its index in the order Keras
        # tracks them.
        self.pre_attention_norm = norm("pre_attention_norm")
        if use_post_attention_norm:
            self.post_attention_norm = norm("post_attention_norm")
        self.attention = Gemma3Attention(
            hidden_dim=hidden_dim,
            head_dim=head_dim,
            num_query_heads=num_query_heads,
            num_key_value_heads=num_key_value_heads,
            query_head_dim_normalize=query_head_dim_normalize,
            query_pre_attn_scalar=query_pre_attn_scalar,
            use_query_key_norm=use_query_key_norm,
            logit_soft_cap=logit_soft_cap,
            rope_wavelength=rope_wavelength,
            rope_scaling_factor=rope_scaling_factor,
            layer_norm_epsilon=layer_norm_epsilon,
            dropout=dropout,
            dtype=self.dtype_policy,
            name="attention",
        )
        self.pre_ffw_norm = norm("pre_ffw_norm")
        if use_post_ffw_norm:
            self.post_ffw_norm = norm("post_ffw_norm")
        self.gating_ffw = dense("btd,df->btf", intermediate_dim, "ffw_gating")
        self.gating_ffw_2 = dense("btd,df->btf", intermediate_dim, "ffw_gating_2")
        self.ffw_linear = dense("btf,fd->btd", hidden_dim, "ffw_linear")
        self.residual_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        for layer in (self.pre_attention_norm, self.attention, self.pre_ffw_norm, self.gating_ffw, self.gating_ffw_2):
            layer.build(input_shape)
        self.ffw_linear.build((None, None, self.intermediate_dim))
        if self.use_post_attention_norm:
            self.post_attention_norm.build(input_shape)
        if self.use_post_ffw_norm:
            self.post_ffw_norm.build(input_shape)

    @property
    def projections(self):
        """The EinsumDense layers this block applies through `layers.projections` (an export gives them serving
        kernels there)."""
        attention = self.attention
        return [attention.query_dense, attention.key_dense, attention.value_dense, attention.output_dense,
                self.gating_ffw, self.gating_ffw_2, self.ffw_linear]

    def call(self, x, attention_mask, cache=None, cache_update_index=0, rope=None, slots=None, training=None):
        """x: [B, T, D]; attention_mask: bool [B, T, S]. Returns [B, T, D] (and the cache if given). `rope` and
        `slots`: see `Gemma3Attention.call`."""
        attention = self.attention(
            self.pre_attention_norm(x), attention_mask, cache=cache,
            cache_update_index=cache_update_index, rope=rope, slots=slots, training=training,
        )
        if cache is not None:
            attention, cache = attention
        if self.use_post_attention_norm:
            attention = self.post_attention_norm(attention)
        x = x + self.residual_dropout(attention, training=training)

        normalized = self.pre_ffw_norm(x)
        hidden = keras.activations.gelu(feedforward(self.gating_ffw, normalized), approximate=True)
        ffw = feedforward(self.ffw_linear, hidden * feedforward(self.gating_ffw_2, normalized))
        if self.use_post_ffw_norm:
            ffw = self.post_ffw_norm(ffw)
        x = x + self.residual_dropout(ffw, training=training)
        if cache is not None:
            return x, cache
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "head_dim": self.head_dim,
            "num_query_heads": self.num_query_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "query_head_dim_normalize": self.query_head_dim_normalize,
            "query_pre_attn_scalar": self.query_pre_attn_scalar,
            "use_query_key_norm": self.use_query_key_norm,
            "use_post_ffw_norm": self.use_post_ffw_norm,
            "use_post_attention_norm": self.use_post_attention_norm,
            "logit_soft_cap": self.logit_soft_cap,
            "use_sliding_window_attention": self.use_sliding_window_attention,
            "sliding_window_size": self.sliding_window_size,
            "rope_wavelength": self.rope_wavelength,
            "rope_scaling_factor": self.rope_scaling_factor,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "dropout": self.dropout,
        }
