"""keras-hub preset directories: keras-hub's own saves load into ours, ours load into keras-hub."""

import json
import shutil

import keras_hub
import numpy as np
import pytest
import tensorflow as tf

import gemma3_tf
from keras_hub_oracle import TEXT_CONFIG, VISION_CONFIG, randomize, save_keras_hub_preset, text_inputs, vision_inputs

TOLERANCE = 1e-4
# Plain text: keras-hub's SentencePiece does not split control pieces out of text (ours does, as HF's).
TEXTS = ["Hello world", "def f(x):\n    return x * 2", "你好 quick   fox"]


def token_ids(tokenizer):
    ids = tokenizer(tf.constant(TEXTS))
    return ids.to_list() if hasattr(ids, "to_list") else ids


def inputs_for(vision):
    return vision_inputs([2, 1]) if vision else text_inputs()


def assert_same_outputs(reference, ours, vision):
    inputs = inputs_for(vision)
    np.testing.assert_allclose(np.asarray(ours(inputs)), np.asarray(reference(inputs)), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("vision", [False, True])
def test_keras_hub_preset_loads(tmp_path, tiny_proto, vision):
    reference = save_keras_hub_preset(tmp_path, tiny_proto, vision)
    ours = gemma3_tf.Gemma3Backbone.from_preset(str(tmp_path))
    assert_same_outputs(reference, ours, vision)
    tokenizer = gemma3_tf.Gemma3Tokenizer.from_preset(str(tmp_path))
    reference_tokenizer = keras_hub.models.Gemma3Tokenizer.from_preset(str(tmp_path))
    assert token_ids(tokenizer) == token_ids(reference_tokenizer)


def test_sharded_keras_hub_preset_loads(tmp_path, tiny_proto):
    reference = save_keras_hub_preset(tmp_path, tiny_proto, max_shard_size=0.00002)
    assert (tmp_path / "model.weights.json").exists() and not (tmp_path / "model.weights.h5").exists()
    assert_same_outputs(reference, gemma3_tf.Gemma3Backbone.from_preset(str(tmp_path)), vision=False)


@pytest.mark.parametrize("vision", [False, True])
def test_keras_hub_loads_our_preset(tmp_path, tiny_proto, vision):
    encoder = gemma3_tf.Gemma3VisionEncoder(**VISION_CONFIG) if vision else None
    ours = gemma3_tf.Gemma3Backbone(**TEXT_CONFIG, vision_encoder=encoder)
    randomize(ours, seed=3)
    preprocessor = gemma3_tf.Gemma3CausalLMPreprocessor(
        gemma3_tf.Gemma3Tokenizer(tiny_proto), gemma3_tf.Gemma3ImageConverter(28) if vision else None,
        sequence_length=64, num_vision_tokens_per_image=4)
    causal_lm = gemma3_tf.Gemma3CausalLM(ours, preprocessor)
    causal_lm.save_to_preset(str(tmp_path))

    reference = keras_hub.models.Gemma3Backbone.from_preset(str(tmp_path))
    assert type(reference.vision_encoder).__module__.startswith("keras_hub") if vision else reference.vision_encoder is None
    assert_same_outputs(reference, ours, vision)
    inputs = inputs_for(vision)
    reference_lm = keras_hub.models.Gemma3CausalLM.from_preset(str(tmp_path))  # reads our preprocessor.json
    np.testing.assert_allclose(np.asarray(reference_lm(inputs)), np.asarray(causal_lm(inputs)), atol=TOLERANCE, rtol=0)
    assert reference_lm.preprocessor.sequence_length == 64
    reloaded = gemma3_tf.Gemma3CausalLM.from_preset(str(tmp_path))
    assert reloaded.preprocessor.sequence_length == 64
    assert (reloaded.preprocessor.image_converter is not None) == vision
    reference_tokenizer = keras_hub.models.Gemma3Tokenizer.from_preset(str(tmp_path))
    assert token_ids(reference_tokenizer) == token_ids(gemma3_tf.Gemma3Tokenizer(tiny_proto))


def test_load_weights_false_and_overrides(tmp_path, tiny_proto):
    save_keras_hub_preset(tmp_path, tiny_proto)
    fresh = gemma3_tf.Gemma3Backbone.from_preset(str(tmp_path), load_weights=False, dtype="bfloat16", dropout=0.1)
    assert fresh.num_layers == TEXT_CONFIG["num_layers"] and fresh.dropout == 0.1
    assert fresh.dtype_policy.name == "bfloat16"
    cast = gemma3_tf.Gemma3Backbone.from_preset(str(tmp_path), dtype="bfloat16")
    assert cast.token_embedding.embeddings.dtype == "bfloat16"


def test_config_that_does_not_match_the_weights(tmp_path, tiny_proto):
    save_keras_hub_preset(tmp_path, tiny_proto)
    config = json.loads((tmp_path / "config.json").read_text())
    config["config"]["intermediate_dim"] = 48
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"the weights do not match config.json .*"
                                         r"'decoder_block_0/ffw_gating/kernel \(16, 48\)'.*gating_ffw/vars/0 \(16, 32\)"):
        gemma3_tf.Gemma3Backbone.from_preset(str(tmp_path))
    config["config"].update(intermediate_dim=32, num_layers=6)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"the model has 80 weights, the file 93"):
        gemma3_tf.Gemma3Backbone.from_preset(str(tmp_path))


def test_damaged_and_foreign_directories(tmp_path, tiny_proto):
    preset = tmp_path / "preset"
    save_keras_hub_preset(preset, tiny_proto)
    weights = preset / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:20000])
    with pytest.raises(ValueError, match=r"model.weights.h5 is not a readable HDF5 weights file \(truncated"):
        gemma3_tf.Gemma3Backbone.from_preset(str(preset))

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("")
    with pytest.raises(ValueError, match=r"is not a Gemma 3 checkpoint: expected a keras-hub preset directory .* "
                                         r"It holds: \['notes.txt'\]"):
        gemma3_tf.Gemma3Backbone.from_preset(str(empty))

    other = tmp_path / "other"
    shutil.copytree(preset, other)
    config = json.loads((other / "config.json").read_text())
    config["registered_name"] = "keras_hub>GemmaBackbone"
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"describes 'keras_hub>GemmaBackbone'; expected a Gemma 3 backbone"):
        gemma3_tf.Gemma3Backbone.from_preset(str(other))

    embedding = tmp_path / "embedding"
    shutil.copytree(preset, embedding)
    config = json.loads((embedding / "config.json").read_text())
    config["config"]["is_embedding_model"] = True
    (embedding / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"`is_embedding_model` is True \(an EmbeddingGemma model\)"):
        gemma3_tf.Gemma3Backbone.from_preset(str(embedding))
