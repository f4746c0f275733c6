"""Our backbone and causal LM against keras-hub 0.32's Gemma 3 with the same random weights (float32)."""

import keras_hub
import numpy as np
import pytest

import gemma3_tf
from keras_hub_oracle import TEXT_CONFIG, build_pair, text_inputs, text_only, vision_inputs

TOLERANCE = 1e-4


def assert_close(reference, ours, inputs, reference_inputs=None):
    """Hidden states and logits agree at every valid position."""
    reference_inputs = inputs if reference_inputs is None else reference_inputs
    valid = inputs["padding_mask"].astype(bool)
    expected, actual = np.asarray(reference(reference_inputs)), np.asarray(ours(inputs))
    assert actual.shape == expected.shape
    assert np.abs(actual - expected)[valid].max() <= TOLERANCE
    expected_logits = np.asarray(
        keras_hub.models.Gemma3CausalLM(backbone=reference, preprocessor=None)(reference_inputs)
    )
    actual_logits = np.asarray(gemma3_tf.Gemma3CausalLM(ours)(inputs))
    assert np.abs(actual_logits - expected_logits)[valid].max() <= TOLERANCE
    # The caps must be in force for the comparison to mean something.
    assert np.abs(actual_logits).max() <= TEXT_CONFIG["final_logit_soft_cap"]
    assert np.abs(actual_logits).max() > 0.5 * TEXT_CONFIG["final_logit_soft_cap"]


def test_text_only_soft_caps_sliding_window_and_rope_scaling(tmp_path):
    reference, ours = build_pair(tmp_path)
    assert_close(reference, ours, text_inputs(batch=3, length=12))


def test_text_only_without_sliding_window_or_post_norms(tmp_path):
    config = dict(TEXT_CONFIG, use_sliding_window_attention=False, use_post_ffw_norm=False,
                  use_post_attention_norm=False, attention_logit_soft_cap=None)
    reference, ours = build_pair(tmp_path, config, seed=3)
    inputs = text_inputs(batch=2, length=9)
    expected, actual = np.asarray(reference(inputs)), np.asarray(ours(inputs))
    assert np.abs(actual - expected)[inputs["padding_mask"].astype(bool)].max() <= TOLERANCE


@pytest.mark.parametrize("images_per_row", [(1, 1), (2, 1, 2)], ids=["one_image", "two_images_padded"])
def test_vision_and_text(tmp_path, images_per_row):
    reference, ours = build_pair(tmp_path, vision=True, seed=4)
    assert_close(reference, ours, vision_inputs(images_per_row))


def test_vision_model_with_zero_images_is_the_text_model(tmp_path):
    vision_reference, ours = build_pair(tmp_path, vision=True, seed=5)
    reference = text_only(vision_reference)
    inputs = vision_inputs((0, 0))
    assert inputs["images"].shape[1] == 0 and inputs["vision_indices"].shape == (2, 0)
    tokens_only = {key: inputs[key] for key in ("token_ids", "padding_mask")}
    assert_close(reference, ours, inputs, reference_inputs=tokens_only)


def test_keras_hub_loads_our_weights(tmp_path):
    reference, ours = build_pair(tmp_path, vision=True, seed=6)
    for weight in ours.weights:  # new values, so that the load is seen to happen
        weight.assign(weight.numpy() * 0.5 + 0.01)
    ours.save_weights(str(tmp_path / "ours.weights.h5"))
    reference.load_weights(str(tmp_path / "ours.weights.h5"))
    inputs = vision_inputs((1, 2))
    np.testing.assert_allclose(np.asarray(reference(inputs)), np.asarray(ours(inputs)), atol=TOLERANCE)


def _set_lora_factors(backbone, seed):
    """Non-zero LoRA factors (B starts at zero, which would make any file look right)."""
    rng = np.random.default_rng(seed)
    for weight in backbone.weights:
        if weight.path.endswith(("lora_kernel_a", "lora_kernel_b")):
            weight.assign(rng.normal(0.0, 0.3, weight.shape).astype("float32"))


@pytest.mark.parametrize("vision", [False, True], ids=["text", "vision"])
def test_lora_trains_what_keras_hub_trains_and_lora_files_cross_both_ways(tmp_path, vision):
    reference, ours = build_pair(tmp_path, vision=vision, seed=7)
    reference.enable_lora(4)
    ours.enable_lora(4)
    assert sorted(w.path for w in ours.trainable_weights) == sorted(w.path for w in reference.trainable_weights)
    assert ours.count_params() == reference.count_params()
    assert (sum(int(np.prod(w.shape)) for w in ours.trainable_weights)
            == sum(int(np.prod(w.shape)) for w in reference.trainable_weights))
    inputs = vision_inputs((1, 2)) if vision else text_inputs()
    # keras-hub's file -> ours.
    _set_lora_factors(reference, seed=1)
    reference.save_lora_weights(str(tmp_path / "keras_hub.lora.h5"))
    fresh_reference, fresh_ours = build_pair(tmp_path, vision=vision, seed=7)
    fresh_ours.load_lora_weights(str(tmp_path / "keras_hub.lora.h5"))  # enables LoRA at the file's rank
    np.testing.assert_allclose(np.asarray(fresh_ours(inputs)), np.asarray(reference(inputs)), atol=TOLERANCE)
    # Ours -> keras-hub's.
    _set_lora_factors(ours, seed=2)
    ours.save_lora_weights(str(tmp_path / "ours.lora.h5"))
    fresh_reference.load_lora_weights(str(tmp_path / "ours.lora.h5"))
    np.testing.assert_allclose(np.asarray(fresh_reference(inputs)), np.asarray(ours(inputs)), atol=TOLERANCE)
    assert np.abs(np.asarray(ours(inputs)) - np.asarray(reference(inputs))).max() > 1e-3  # the factors matter
    with pytest.raises(ValueError, match=r"must end in `.lora.h5`"):
        ours.save_lora_weights(str(tmp_path / "x.h5"))
    other = build_pair(tmp_path, vision=vision, seed=7)[1]
    other.enable_lora(2)
    with pytest.raises(ValueError, match="rank 4, but this model's LoRA has rank 2"):
        other.load_lora_weights(str(tmp_path / "ours.lora.h5"))


def test_generate_with_and_without_strip_prompt_equals_keras_hubs(tmp_path, tiny_proto):
    reference, ours = build_pair(tmp_path, config=dict(TEXT_CONFIG, vocabulary_size=400), seed=8)
    reference_lm = keras_hub.models.Gemma3CausalLM(
        backbone=reference, preprocessor=keras_hub.models.Gemma3CausalLMPreprocessor(
            keras_hub.models.Gemma3Tokenizer(proto=tiny_proto), sequence_length=24))
    our_lm = gemma3_tf.Gemma3CausalLM(ours, gemma3_tf.Gemma3CausalLMPreprocessor(
        gemma3_tf.Gemma3Tokenizer(tiny_proto), sequence_length=24))
    reference_lm.compile(sampler="greedy")
    our_lm.compile(sampler="greedy")
    prompts = ["Hello world", "The quick brown fox jumps"]
    for strip_prompt in (False, True):
        expected = reference_lm.generate(prompts, max_length=24, strip_prompt=strip_prompt)
        assert our_lm.generate(prompts, max_length=24, strip_prompt=strip_prompt) == expected
        assert our_lm.generate(prompts[1], max_length=24, strip_prompt=strip_prompt) == expected[1]
    assert all(expected) and not any(text.startswith(prompt) for text, prompt in zip(expected, prompts))
