"""The decoder's projections against Keras' own `EinsumDense` call, with the layer's kernel and inside
`serving_kernels` (the layout an export traces): float32, LoRA, int8 (its serving kernels with and without XLA's
integer dots)."""

import numpy as np
import pytest
import tensorflow as tf

from gemma3_tf.layers.projections import feedforward, heads_output, heads_projection, serving_kernels
from gemma3_tf.quantization import compiled_by_xla, is_int8, quantize_weights
from tiny_exports import tiny_lm


def block_projections(causal_lm):
    """[(dense, projection function, input [B, T, *contracted])] of the first decoder block."""
    block = causal_lm.backbone.transformer_layers[0]
    attention = block.attention
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, block.hidden_dim)).astype("float32")
    heads = rng.normal(size=(2, 3, attention.num_query_heads, attention.head_dim)).astype("float32")
    hidden = rng.normal(size=(2, 3, block.intermediate_dim)).astype("float32")
    return [(attention.query_dense, heads_projection, x), (attention.key_dense, heads_projection, x),
            (attention.value_dense, heads_projection, x), (attention.output_dense, heads_output, heads),
            (block.gating_ffw, feedforward, x), (block.gating_ffw_2, feedforward, x),
            (block.ffw_linear, feedforward, hidden)]


@pytest.mark.parametrize("weights", ["float32", "lora", "int8", "bfloat16"])
def test_serving_kernels_give_keras_einsum_dense_outputs_and_go_away_on_exit(tiny_proto, weights):
    causal_lm = tiny_lm(tiny_proto, num_layers=1, seed=6, dtype="bfloat16" if weights == "bfloat16" else None)
    if weights == "lora":
        causal_lm.backbone.enable_lora(2)
        for weight in causal_lm.backbone.weights:  # LoRA's B starts at zero: give the adapters an effect
            if "lora_kernel_b" in weight.path:
                weight.assign(np.random.default_rng(3).normal(0, 0.5, weight.shape).astype("float32"))
    if weights == "int8":
        quantize_weights(causal_lm.backbone, "int8")
    projections = block_projections(causal_lm)
    if weights == "bfloat16":
        projections = [(dense, project, tf.cast(x, tf.bfloat16)) for dense, project, x in projections]
    keras_outputs = [np.asarray(dense(x), "float32") for dense, _, x in projections]  # Keras' call (its int8 too)
    tolerance = {"int8": 1e-4, "bfloat16": 2e-2}.get(weights, 1e-5)
    for (dense, project, x), expected in zip(projections, keras_outputs):
        np.testing.assert_allclose(project(dense, x), expected, rtol=tolerance, atol=tolerance, err_msg=dense.path)

    backbone = causal_lm.backbone
    ids = tf.constant([[2, 7, 399]])
    embedded, logits = backbone.token_embedding(ids), backbone.logits(tf.ones((1, backbone.hidden_dim), "bfloat16"))
    with serving_kernels([dense for dense, _, _ in projections], backbone.token_embedding) as copies:
        # A bfloat16 copy holds its bits (`quantization.serving_copy`); the table too, and only then.
        assert len(copies) == len(projections) + (weights == "bfloat16")
        stored = {"lora": "float32", "bfloat16": "int16"}.get(weights, weights)
        for (dense, project, x), expected, copy in zip(projections, keras_outputs, copies):
            assert copy.shape == (expected[0, 0].size, np.prod(x.shape[2:])), dense.path  # [outputs, contracted]
            assert copy.dtype == stored, dense.path
            np.testing.assert_allclose(np.asarray(project(dense, x), "float32"), expected, rtol=tolerance,
                                       atol=tolerance, err_msg=dense.path)
            if weights in ("int8", "bfloat16"):
                def compiled(x, dense=dense, project=project):
                    with compiled_by_xla():
                        return project(dense, x)
                compiled = tf.function(compiled, jit_compile=True)
                np.testing.assert_allclose(np.asarray(compiled(x), "float32"), expected, rtol=tolerance,
                                           atol=tolerance, err_msg=dense.path)
        np.testing.assert_array_equal(backbone.embed_tokens(ids), embedded)
        np.testing.assert_array_equal(backbone.logits(tf.ones((1, backbone.hidden_dim), "bfloat16")), logits)
    if weights == "int8":
        assert sum(is_int8(dense) for dense, _, _ in projections) == 2  # the gates; the others: weight-only int8

    for dense, _, _ in projections:
        assert not hasattr(dense, "serving_kernel")
    assert not hasattr(backbone.token_embedding, "serving_table")
    if weights == "lora":  # after exit the layers read their own kernels again: a changed adapter shows
        adapted = [index for index, (dense, _, _) in enumerate(projections) if dense.lora_enabled]
        assert adapted  # the query and value projections
        for index in adapted:
            dense, project, x = projections[index]
            dense.lora_kernel_b.assign(np.zeros(dense.lora_kernel_b.shape, "float32"))
            changed = np.asarray(project(dense, x))
            np.testing.assert_allclose(changed, dense(x), rtol=1e-5, atol=1e-5)
            assert np.abs(changed - keras_outputs[index]).max() > 1e-3
