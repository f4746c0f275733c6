"""Every preset's architecture, built symbolically, has the parameter count of the keras-hub preset table."""

import pytest
import tensorflow as tf

import gemma3_tf
from gemma3_tf.presets import PRESETS, VISION_ENCODER


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parameter_count(name):
    preset = PRESETS[name]
    # Inside a graph, variables are declared but never allocated: 27B builds in well under 1 GB.
    with tf.Graph().as_default():
        vision_encoder = (
            gemma3_tf.Gemma3VisionEncoder(**VISION_ENCODER, output_dim=preset["backbone"]["hidden_dim"])
            if preset["vision"] else None
        )
        backbone = gemma3_tf.Gemma3Backbone(**preset["backbone"], vision_encoder=vision_encoder)
        count = backbone.count_params()
    assert abs(count / preset["params"] - 1) <= 0.005, (count, preset["params"])
