"""Weight-only int8: the layers' own matmuls against Keras' int8 call on the same quantized weights, the error
against float32, and the export through TF Serving's loader against the in-process int8 model; the real 270M's
bfloat16 and int8 weights against its float32 ones on greedy tokens."""

import os
import sys

import numpy as np
import pytest

import gemma3_tf
import gemma3_tf.backbone
import gemma3_tf.layers.projections
from gemma3_tf import cli
from gemma3_tf.quantization import is_weight_only_int8, quantize_weights
from session_savedmodel import SessionSavedModel
from tiny_exports import PROMPTS, in_process, tiny_lm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.weight_options import PROMPTS as BENCHMARK_PROMPTS, STEPS, agreement, greedy_sequences  # noqa: E402


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
    for module in (gemma3_tf.backbone, gemma3_tf.layers.projections):
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


@pytest.mark.slow
def test_real_270m_bfloat16_and_int8_weights_agree_with_float32_on_greedy_tokens(real_causal_lm, gguf_checkpoint):
    """Issue 21's bar, as benchmarks/weight_options.py measures it: teacher-forced top-1 agreement of at least 98%
    over 256 greedy float32 tokens after each of its three prompts (fewer tokens are too few: over 64 x 2,
    int8 measured 96.9%, four tokens of 128). The export options run these weights as the in-process model
    does (the session-path tests of test_export and above)."""
    sequences, scores = greedy_sequences(real_causal_lm, BENCHMARK_PROMPTS, STEPS)
    bfloat16 = gemma3_tf.Gemma3CausalLM.from_preset(gguf_checkpoint, dtype="bfloat16", progress=False)
    int8 = gemma3_tf.Gemma3CausalLM.from_preset(gguf_checkpoint, progress=False)
    quantize_weights(int8.backbone, "int8")
    for name, causal_lm in (("bfloat16", bfloat16), ("int8", int8)):
        top1, error = agreement(causal_lm, sequences, scores)
        assert top1 >= 0.98 and error < 0.5, (name, top1, error)  # measured: 98.8% / 0.10 and 98.7% / 0.25
