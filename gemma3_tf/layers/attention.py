import math

import keras
import tensorflow as tf
from keras import ops

from gemma3_tf.layers.projections import heads_output, heads_projection
from gemma3_tf.layers.rms_normalization import RMSNormalization
from gemma3_tf.layers.rotary_embedding import apply_rotary_embedding, rotation


def cache_slots(batch, length, index):
    """The (row, position) slots [B, T, 2] that T new keys or values of each of B rows take in a cache [B, S, K, H],
    from position `index` on: the same for every layer's keys and values."""
    rows = tf.broadcast_to(tf.range(batch)[:, None], [batch, length])
    positions = tf.broadcast_to(index + tf.range(length)[None, :], [batch, length])
    return tf.stack([rows, positions], axis=-1)


def write_cache(cache, update, slots):
    """`cache` [B, S, K, H] with `update` [B, T, K, H] written at `slots` (`cache_slots`).

    A scatter, not `ops.slice_update`: in TensorFlow that is XlaDynamicUpdateSlice, an op with no
    kernel outside XLA, so a SavedModel exported without XLA could not run it.
    """
    return tf.tensor_scatter_nd_update(cache, slots, tf.cast(update, cache.dtype))


class Gemma3Attention(keras.layers.Layer):
    """Grouped-query attention with Q/K RMSNorm, RoPE, logit soft cap and a KV cache.

    Sublayer and weight names follow keras-hub's `CachedGemma3Attention`, so
    the weights of either load into the other.
    """

    def __init__(
        self,
        hidden_dim,
        head_dim,
        num_query_heads,
        num_key_value_heads,
        query_head_dim_normalize=True,
        query_pre_attn_scalar=None,
        use_query_key_norm=True,
        logit_soft_cap=None,
        rope_wavelength=10_000.0,
        rope_scaling_factor=1.0,
        layer_norm_epsilon=1e-6,
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_query_heads % num_key_value_heads:
            raise ValueError(
                f"`num_query_heads` ({num_query_heads}) must be a multiple of "
                f"`num_key_value_heads` ({num_key_value_heads})."
            )
        self.hidden_dim = hidden_dim
        self.head_dim = head_dim
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.query_head_dim_normalize = query_head_dim_normalize
        self.query_pre_attn_scalar = query_pre_attn_scalar
        self.use_query_key_norm = use_query_key_norm
        self.logit_soft_cap = logit_soft_cap
        self.rope_wavelength = rope_wavelength
        self.rope_scaling_factor = rope_scaling_factor
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout

        # Queries are scaled by query_pre_attn_scalar ** -0.5 (transformers' name). keras-hub knows two values,
        # chosen by `query_head_dim_normalize`: head_dim, or hidden / heads (the 27B's 168); None keeps its rule.
        scale_dim = query_pre_attn_scalar or (head_dim if query_head_dim_normalize else hidden_dim / num_query_heads)
        self.query_scale = 1.0 / math.sqrt(scale_dim)

        def projection(equation, num_heads, name):
            return keras.layers.EinsumDense(
                equation, output_shape=(None, num_heads, head_dim), dtype=self.dtype_policy, name=name
            )

        self.query_dense = projection("btd,ndh->btnh", num_query_heads, "query")
        self.key_dense = projection("bsd,kdh->bskh", num_key_value_heads, "key")
        self.value_dense = projection("bsd,kdh->bskh", num_key_value_heads, "value")
        if use_query_key_norm:
            self.query_norm = RMSNormalization(layer_norm_epsilon, dtype=self.dtype_policy, name="query_norm")
            self.key_norm = RMSNormalization(layer_norm_epsilon, dtype=self.dtype_policy, name="key_norm")
        self.output_dense = keras.layers.EinsumDense(
            "btnh,nhd->btd", output_shape=(None, hidden_dim), dtype=self.dtype_policy, name="attention_output"
        )
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.query_dense.build(input_shape)
        self.key_dense.build(input_shape)
        self.value_dense.build(input_shape)
        if self.use_query_key_norm:
            self.query_norm.build((None, None, self.num_query_heads, self.head_dim))
            self.key_norm.build((None, None, self.num_key_value_heads, self.head_dim))
        self.output_dense.build((None, None, self.num_query_heads, self.head_dim))

    def _project(self, dense, norm, x, rope):
        x = heads_projection(dense, x)
        if self.use_query_key_norm:
            x = norm(x)
        return apply_rotary_embedding(x, rope)

    def call(self, x, attention_mask, cache=None, cache_update_index=0, rope=None, slots=None, training=None):
        """x: [B, T, D]; attention_mask: bool [B, T, S]; cache: (keys, values), each [B, S, K, H].

        `rope` (`rotation` of this layer's wavelength and scaling at positions `cache_update_index + arange(T)`) and
        `slots` (`cache_slots`) may come from the caller, made once for every layer; else this call makes them.
        Returns the output [B, T, D], and the updated cache when one is given
        (the new keys/values written at `cache_update_index`).
        """
        if rope is None:
            positions = ops.arange(ops.shape(x)[1], dtype="int32") + cache_update_index
            rope = rotation(positions, self.head_dim, self.rope_wavelength, self.rope_scaling_factor,
                            self.compute_dtype)
        query = self._project(self.query_dense, getattr(self, "query_norm", None), x, rope)
        key = self._project(self.key_dense, getattr(self, "key_norm", None), x, rope)
        value = heads_projection(self.value_dense, x)
        if cache is not None:
            if slots is None:
                slots = cache_slots(ops.shape(x)[0], ops.shape(x)[1], cache_update_index)
            key, value = write_cache(cache[0], key, slots), write_cache(cache[1], value, slots)

        output = heads_output(self.output_dense, self._attend(query, key, value, attention_mask, training))
        if cache is not None:
            return output, (key, value)
        return output

    def _attend(self, query, key, value, attention_mask, training):
        """query [B, T, N, H], key/value [B, S, K, H] -> [B, T, N, H]."""
        batch, length = ops.shape(query)[0], ops.shape(query)[1]
        groups = self.num_query_heads // self.num_key_value_heads
        query = query * ops.cast(self.query_scale, query.dtype)
        query = ops.reshape(query, (batch, length, self.num_key_value_heads, groups, self.head_dim))
        logits = ops.einsum("btkgh,bskh->bkgts", query, ops.cast(key, query.dtype))
        logits = ops.cast(logits, "float32")
        if self.logit_soft_cap is not None:
            logits = ops.tanh(logits / self.logit_soft_cap) * self.logit_soft_cap
        mask = attention_mask[:, None, None, :, :]
        logits = ops.where(mask, logits, -1e9)
        probs = ops.softmax(logits, axis=-1)
        # A query that sees no key at all (a fully padded row) outputs zeros, not a uniform mix.
        probs = ops.where(ops.any(mask, axis=-1, keepdims=True), probs, 0.0)
        probs = self.dropout_layer(ops.cast(probs, self.compute_dtype), training=training)
        output = ops.einsum("bkgts,bskh->btkgh", probs, ops.cast(value, probs.dtype))
        return ops.reshape(output, (batch, length, self.num_query_heads, self.head_dim))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "head_dim": self.head_dim,
            "num_query_heads": self.num_query_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "query_head_dim_normalize": self.query_head_dim_normalize,
            "query_pre_attn_scalar": self.query_pre_attn_scalar,
            "use_query_key_norm": self.use_query_key_norm,
            "logit_soft_cap": self.logit_soft_cap,
            "rope_wavelength": self.rope_wavelength,
            "rope_scaling_factor": self.rope_scaling_factor,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "dropout": self.dropout,
        }
