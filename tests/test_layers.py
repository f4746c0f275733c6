"""Decoder building blocks against independent numpy references and the spec's mask rules."""

import keras
import numpy as np
import pytest

from gemma3_tf.layers import Gemma3Attention, RMSNormalization, compute_attention_mask

HIDDEN, HEAD_DIM, HEADS, KV_HEADS = 16, 8, 4, 2


def numpy_rms_norm(x, scale, eps=1e-6):
    return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps) * (1 + scale)


def numpy_rope(x, max_wavelength):
    """x [T, N, H], positions 0..T-1, rotate-half layout."""
    half = x.shape[-1] // 2
    inverse_freq = max_wavelength ** (-np.arange(half) * 2 / x.shape[-1])
    angles = np.arange(x.shape[0])[:, None] * inverse_freq[None]
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def numpy_attention(layer, x, scale, soft_cap=None):
    """One Gemma attention layer, causal, for a single sequence x [T, D]."""
    weights = {w.path.split("/")[-2] + "/" + w.name: w.numpy() for w in layer.weights}
    q = np.einsum("td,ndh->tnh", x, weights["query/kernel"])
    k = np.einsum("td,kdh->tkh", x, weights["key/kernel"])
    v = np.einsum("td,kdh->tkh", x, weights["value/kernel"])
    q = numpy_rope(numpy_rms_norm(q, weights["query_norm/scale"]), 10_000.0)
    k = numpy_rope(numpy_rms_norm(k, weights["key_norm/scale"]), 10_000.0)
    length, groups = x.shape[0], HEADS // KV_HEADS
    out = np.zeros((length, HEADS, HEAD_DIM))
    for head in range(HEADS):
        logits = q[:, head] @ k[:, head // groups].T * scale
        if soft_cap:
            logits = np.tanh(logits / soft_cap) * soft_cap
        logits = np.where(np.tril(np.ones((length, length), bool)), logits, -np.inf)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        out[:, head] = (probs / probs.sum(-1, keepdims=True)) @ v[:, head // groups]
    return np.einsum("tnh,nhd->td", out, weights["attention_output/kernel"])


def make_attention(**kwargs):
    layer = Gemma3Attention(hidden_dim=HIDDEN, head_dim=HEAD_DIM, num_query_heads=HEADS,
                            num_key_value_heads=KV_HEADS, **kwargs)
    layer.build((None, None, HIDDEN))
    rng = np.random.default_rng(0)
    for weight in layer.weights:
        weight.assign(rng.normal(0, 0.5, weight.shape))
    return layer


def causal_mask(length):
    return compute_attention_mask(np.ones((1, length), "int32"), length)


@pytest.mark.parametrize("query_head_dim_normalize", [True, False])
def test_attention_matches_numpy_reference(query_head_dim_normalize):
    layer = make_attention(query_head_dim_normalize=query_head_dim_normalize, logit_soft_cap=5.0)
    x = np.random.default_rng(1).normal(size=(1, 6, HIDDEN)).astype("float32")
    # False scales queries by 1/sqrt(hidden_dim / num_query_heads) = 1/2, not 1/sqrt(head_dim).
    scale = 1 / np.sqrt(HEAD_DIM) if query_head_dim_normalize else 1 / np.sqrt(HIDDEN / HEADS)
    expected = numpy_attention(layer, x[0], scale, soft_cap=5.0)
    np.testing.assert_allclose(np.asarray(layer(x, causal_mask(6)))[0], expected, atol=1e-5)
    other_scale = 1 / np.sqrt(HIDDEN / HEADS) if query_head_dim_normalize else 1 / np.sqrt(HEAD_DIM)
    assert np.abs(numpy_attention(layer, x[0], other_scale, soft_cap=5.0) - expected).max() > 1e-3


def test_kv_cache_decoding_equals_full_pass():
    layer = make_attention()
    length, prefill = 7, 3
    x = np.random.default_rng(2).normal(size=(2, length, HIDDEN)).astype("float32")
    full = np.asarray(layer(x, np.asarray(causal_mask(length)).repeat(2, axis=0)))
    padding = np.ones((2, length), "int32")
    cache = (np.zeros((2, length, KV_HEADS, HEAD_DIM), "float32"),) * 2
    outputs = []
    out, cache = layer(x[:, :prefill], compute_attention_mask(padding, prefill), cache=cache)
    outputs.append(out)
    for index in range(prefill, length):
        mask = compute_attention_mask(padding, 1, start_index=index)
        out, cache = layer(x[:, index : index + 1], mask, cache=cache, cache_update_index=index)
        outputs.append(out)
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, atol=1e-5)


def test_attention_mask_rules():
    # Tokens 1-2 are one image, 4-5 another; window 3; the last token is padding.
    padding = np.array([[1, 1, 1, 1, 1, 1, 0]])
    vision = np.array([[0, 1, 1, 0, 1, 1, 0]])
    mask = np.asarray(compute_attention_mask(padding, 7, vision_mask=vision, sliding_window_size=3))[0]
    expected = np.array([
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],  # image token 1 sees image token 2 (bidirectional)
        [1, 1, 1, 0, 0, 0, 0],
        [0, 1, 1, 1, 0, 0, 0],  # window 3: positions 1..3
        [0, 0, 1, 1, 1, 1, 0],  # image tokens 4-5 see each other, not image 1-2 beyond the window
        [0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 1, 1, 0],  # the padded key 6 is never visible
    ], bool)
    np.testing.assert_array_equal(mask, expected)


def test_rms_norm_computes_in_float32_under_bfloat16():
    layer = RMSNormalization(dtype="bfloat16")
    x = np.random.default_rng(3).normal(size=(2, 5, 32)).astype("float32") * 100
    layer.build(x.shape)
    layer.scale.assign(np.linspace(-0.5, 0.5, 32))
    x_bf16 = keras.ops.cast(x, "bfloat16")
    out = layer(x_bf16)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    expected = numpy_rms_norm(np.asarray(keras.ops.cast(x_bf16, "float32")), np.asarray(
        keras.ops.cast(layer.scale, "float32")))
    np.testing.assert_allclose(np.asarray(keras.ops.cast(out, "float32")), expected, rtol=1e-2, atol=1e-2)
