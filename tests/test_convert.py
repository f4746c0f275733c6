"""`gemma3-tf convert` and conversions of the real 270M between every format."""

import json
import pathlib

import numpy as np
import pytest

import gemma3_tf
from gemma3_tf import cli
from gemma3_tf.checkpoints import huggingface

HF_TINY = pathlib.Path(__file__).parent / "data" / "hf_tiny"
PROMPT_IDS = np.array([[2, 818, 5279, 529, 7001, 563]], "int32")  # "<bos>The capital of France is"


def logits(causal_lm, token_ids):
    return np.asarray(causal_lm({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}))


@pytest.mark.parametrize("name", ["gemma3_text", "gemma3_multimodal"])
def test_convert_transformers_to_keras_and_back(name, tmp_path, capsys):
    keras_dir, hf_dir = tmp_path / "keras", tmp_path / "hf"
    cli.main(["convert", str(HF_TINY / name), str(keras_dir)])
    assert "(hf) -> " in capsys.readouterr().out
    assert json.loads((keras_dir / "config.json").read_text())["registered_name"] == "keras_hub>Gemma3Backbone"
    cli.main(["convert", str(keras_dir), str(hf_dir), "--format", "hf", "--dtype", "bfloat16"])
    assert json.loads((hf_dir / "config.json").read_text())["dtype"] == "bfloat16"
    original = gemma3_tf.Gemma3Backbone.from_preset(str(HF_TINY / name), progress=False)
    converted = gemma3_tf.Gemma3Backbone.from_preset(str(hf_dir), progress=False)
    for before, after in zip(original.weights, converted.weights):
        np.testing.assert_allclose(after.numpy(), before.numpy(), rtol=1e-2, atol=1e-6)  # bfloat16 rounding


def test_convert_reports_a_missing_source_in_one_line(capsys):
    assert cli.main(["convert", "no/such/dir", "out"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("gemma3-tf convert: error: `preset` 'no/such/dir' is neither an existing file or")
    assert error.count("\n") == 1 and "Traceback" not in error
    with pytest.raises(ValueError, match="`preset` 'no/such/dir' is neither"):  # --verbose: the traceback
        cli.main(["convert", "no/such/dir", "out", "--verbose"])


@pytest.mark.slow
def test_real_270m_through_keras_hub_preset(real_causal_lm, real_tokenizer, tmp_path):
    import keras_hub

    real_causal_lm.save_to_preset(str(tmp_path))
    real_tokenizer.save_to_preset(str(tmp_path))
    expected = logits(real_causal_lm, PROMPT_IDS)
    reference = keras_hub.models.Gemma3Backbone.from_preset(str(tmp_path))
    hidden = reference({"token_ids": PROMPT_IDS, "padding_mask": np.ones_like(PROMPT_IDS)})
    np.testing.assert_allclose(np.asarray(reference.token_embedding(hidden, reverse=True)), expected, atol=1e-4)
    reloaded = gemma3_tf.Gemma3CausalLM.from_preset(str(tmp_path), progress=False)
    np.testing.assert_array_equal(logits(reloaded, PROMPT_IDS), expected)
    assert gemma3_tf.Gemma3Tokenizer.from_preset(str(tmp_path)).proto == real_tokenizer.proto


@pytest.mark.slow
def test_real_270m_through_transformers_format(real_causal_lm, real_tokenizer, tmp_path):
    huggingface.save(real_causal_lm.backbone, str(tmp_path), real_tokenizer, max_shard_size=300 * 1024**2,
                     progress=False)
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1  # sharded, with an index
    reloaded = gemma3_tf.Gemma3CausalLM.from_preset(str(tmp_path), progress=False)
    np.testing.assert_array_equal(logits(reloaded, PROMPT_IDS), logits(real_causal_lm, PROMPT_IDS))
    assert gemma3_tf.Gemma3Tokenizer.from_preset(str(tmp_path)).proto == real_tokenizer.proto
