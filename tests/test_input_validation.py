"""Bad inputs get errors that name the field, what was expected and what came."""

import numpy as np
import pytest

import gemma3_tf
from keras_hub_oracle import TEXT_CONFIG, VISION_CONFIG, text_inputs, vision_inputs


@pytest.fixture(scope="module")
def vision_model():
    return gemma3_tf.Gemma3CausalLM(
        gemma3_tf.Gemma3Backbone(**TEXT_CONFIG, vision_encoder=gemma3_tf.Gemma3VisionEncoder(**VISION_CONFIG))
    )


@pytest.fixture(scope="module")
def text_backbone():
    return gemma3_tf.Gemma3Backbone(**TEXT_CONFIG)


def with_changes(inputs, **changes):
    return {**inputs, **changes}


def test_missing_and_unexpected_keys(text_backbone, vision_model):
    inputs = text_inputs()
    with pytest.raises(ValueError, match=r"missing \['padding_mask'\]"):
        text_backbone({"token_ids": inputs["token_ids"]})
    with pytest.raises(ValueError, match=r"unexpected \['images'\] \(this model has no vision encoder\)"):
        text_backbone(with_changes(inputs, images=np.zeros((3, 0, 28, 28, 3), "float32")))
    with pytest.raises(ValueError, match=r"missing \['images', 'vision_mask', 'vision_indices'\]"):
        vision_model(inputs)
    with pytest.raises(ValueError, match="must be a dict"):
        text_backbone(inputs["token_ids"])


def test_rank_and_dtype(text_backbone):
    inputs = text_inputs()
    with pytest.raises(ValueError, match=r"`token_ids` must have rank 2; got shape \(12,\)"):
        text_backbone(with_changes(inputs, token_ids=inputs["token_ids"][0]))
    with pytest.raises(ValueError, match="`token_ids` must be an integer tensor.*got dtype float32"):
        text_backbone(with_changes(inputs, token_ids=inputs["token_ids"].astype("float32")))
    with pytest.raises(ValueError, match=r"`padding_mask` must match `token_ids` of shape \(3, 12\); got shape \(3, 11\)"):
        text_backbone(with_changes(inputs, padding_mask=inputs["padding_mask"][:, :11]))


def test_token_ids_outside_the_vocabulary(text_backbone):
    inputs = text_inputs()
    inputs["token_ids"][1, 2] = 64
    with pytest.raises(ValueError, match=r"`token_ids` must lie in \[0, 64\) \(the vocabulary\); got \[64\]"):
        text_backbone(inputs)


def test_images(vision_model):
    inputs = vision_inputs((1, 1))
    with pytest.raises(ValueError, match=r"`images` must have shape \[batch, num_images, 28, 28, 3\]; got \(2, 1, 32, 32, 3\)"):
        vision_model(with_changes(inputs, images=np.zeros((2, 1, 32, 32, 3), "float32")))
    with pytest.raises(ValueError, match=r"`images` must be scaled to \[-1, 1\].*got values in \[0, 255\]"):
        vision_model(with_changes(inputs, images=np.linspace(0, 255, 2 * 28 * 28 * 3, dtype="float32").reshape(2, 1, 28, 28, 3)))
    with pytest.raises(ValueError, match="`images` must be a float tensor"):
        vision_model(with_changes(inputs, images=np.zeros((2, 1, 28, 28, 3), "uint8")))


def test_vision_indices(vision_model):
    inputs = vision_inputs((1, 1))
    with pytest.raises(ValueError, match=r"`vision_indices` must have num_images \* 4 = 4 columns .* got shape \(2, 8\)"):
        vision_model(with_changes(inputs, vision_indices=np.zeros((2, 8), "int32")))
    out_of_range = inputs["vision_indices"].copy()
    out_of_range[0, -1] = 20
    with pytest.raises(ValueError, match=r"`vision_indices` must lie in \[0, 20\) \(the sequence length\)"):
        vision_model(with_changes(inputs, vision_indices=out_of_range))
    shifted = inputs["vision_indices"].copy()
    shifted[1] += 1
    with pytest.raises(ValueError, match=r"disagree in row 1: the non-zero indices \[4-7\] .* is set \[3-6\]"):
        vision_model(with_changes(inputs, vision_indices=shifted))
