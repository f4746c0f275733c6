"""Every preset's architecture, built symbolically, has the parameter count of the keras-hub preset table."""

import pytest
import tensorflow as tf

import gemma3_tf
from gemma3_tf.presets import PRESETS


def test_instruct_presets_share_their_base_architecture():
    for name, preset in PRESETS.items():
        if preset["instruct"]:
            base = PRESETS[name.replace("instruct_", "")]
            assert (preset["backbone"], preset["vision"], preset["params"]) == (
                base["backbone"], base["vision"], base["params"]), name


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(name for name, preset in PRESETS.items() if not preset["instruct"]))
def test_parameter_count(name):  # of each architecture once: an instruct preset's is its base's (above)
    # Inside a graph, variables are declared but never allocated: 27B builds in well under 1 GB.
    with tf.Graph().as_default():
        backbone = gemma3_tf.Gemma3Backbone.from_preset(name, load_weights=False)
        count = backbone.count_params()
    assert abs(count / PRESETS[name]["params"] - 1) <= 0.005, (count, PRESETS[name]["params"])
    assert (backbone.vision_encoder is not None) == PRESETS[name]["vision"]


def test_every_class_lists_the_presets():
    expected = {"gemma3_1b", "gemma3_instruct_1b", "gemma3_4b_text", "gemma3_instruct_4b_text", "gemma3_4b",
                "gemma3_instruct_4b", "gemma3_12b_text", "gemma3_instruct_12b_text", "gemma3_12b",
                "gemma3_instruct_12b", "gemma3_27b_text", "gemma3_instruct_27b_text", "gemma3_27b",
                "gemma3_instruct_27b", "gemma3_270m", "gemma3_instruct_270m"}
    for cls in (gemma3_tf.Gemma3Backbone, gemma3_tf.Gemma3CausalLM, gemma3_tf.Gemma3Tokenizer):
        assert set(cls.presets) == expected
