"""Weight-only int8: the layers' own matmuls against Keras' int8 call on the same quantized weights, the error
against float32, and the export through TF Serving's loader against the in-process int8 model."""

import numpy as np
import pytest

import gemma3_tf.backbone
import gemma3_tf.layers.attention
from gemma3_tf import cli
from gemma3_tf.quantization import is_weight_only_int8, quantize_weights
from session_savedmodel import SessionSavedModel
from tiny_exports import PROMPTS, in_process, tiny_lm


def logits(causal_lm, token_ids):
    return np.asarray(causal_lm({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}))


def test_weight_only_int8_equals_keras_int8_call_and_stays_near_float32(tiny_proto, monkeypatch):
    float32 = tiny_lm(tiny_proto, seed=4)
    quantized = tiny_lm(tiny_proto, seed=4)
    quantize_weights(quantized.backbone, "int8")
    embedding = quantized.backbone.token_embedding
    query = quantized.backbone.transformer_layers[0].attention.query_dense
    assert is_weight_only_int8(embedding) and is_weight_only_int8(query)
    assert embedding.embeddings.dtype == "int8" and query.kernel.dtype == "int8"
    token_ids = np.random.default_rng(0).integers(3, 400, (2, 12)).astype("int32")
    ours = logits(quantized, token_ids)
    # Keras' own int8 calls (EinsumDense._int8_call, ReversibleEmbedding reverse) on the same weights.
    for module in (gemma3_tf.backbone, gemma3_tf.layers.attention):
        monkeypatch.setattr(module, "in_own_matmul", lambda layer: layer.quantization_mode is None)
    np.testing.assert_allclose(ours, logits(quantized, token_ids), rtol=1e-4, atol=1e-4)
    reference = logits(float32, token_ids)
    # Per-channel int8 rounds each weight by at most half a step of 1/127 of its channel's largest magnitude.
    assert np.abs(ours - reference).max() < 0.05 * np.abs(reference).max()
    assert (ours.argmax(-1) == reference.argmax(-1)).mean() >= 0.9


def test_int8_export_answers_through_tf_servings_loader_like_the_in_process_int8_model(tiny_proto, tmp_path):
    causal_lm = tiny_lm(tiny_proto, seed=5, num_layers=2)
    preset = str(tmp_path / "preset")
    causal_lm.save_to_preset(preset)
    cli.main(["export", "--preset", preset, "--model_base_path", str(tmp_path / "int8"), "--max_length", "48",
              "--quantize", "int8", "--no-warmup"])
    quantize_weights(causal_lm.backbone, "int8")
    loaded = SessionSavedModel(str(tmp_path / "int8" / "1"))
    served = loaded.generate(prompt=PROMPTS, max_new_tokens=8)
    assert [text.decode("utf-8") for text in served["completion"]] == in_process(causal_lm, PROMPTS, 8)


def test_unknown_weight_option_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["export", "--preset", str(tmp_path), "--model_base_path", str(tmp_path / "x"), "--quantize", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err
