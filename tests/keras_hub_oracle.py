"""Builds keras-hub's Gemma 3 (the test oracle) and ours with the same random weights.

Weights travel through a `.weights.h5` file, so every parity test also checks
that the two models keep one checkpoint layout.
"""

import keras_hub
import numpy as np

import gemma3_tf

TEXT_CONFIG = dict(
    vocabulary_size=64,
    image_size=28,
    num_layers=7,  # layers 0-4 local, 5 global, 6 local
    num_query_heads=4,
    num_key_value_heads=2,
    hidden_dim=16,
    intermediate_dim=32,
    head_dim=8,
    use_post_ffw_norm=True,
    use_post_attention_norm=True,
    attention_logit_soft_cap=2.0,  # small caps, so that they bite on random weights
    final_logit_soft_cap=3.0,
    use_sliding_window_attention=True,
    sliding_window_size=4,
    local_rope_scaling_factor=1.0,
    global_rope_scaling_factor=8.0,
)
VISION_CONFIG = dict(
    image_size=28, patch_size=7, num_heads=2, hidden_dim=8, num_layers=2,
    intermediate_dim=16, output_dim=16, pool_size=2,
)  # 4 image tokens per image


def randomize(model, seed=0, scale=0.3):
    """Non-zero random values for every weight, norm scales included."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.normal(0.0, scale, weight.shape).astype(weight.dtype))


def build_pair(tmp_path, config=TEXT_CONFIG, vision=False, seed=0):
    """(keras-hub backbone, our backbone) holding identical random weights."""
    reference = keras_hub.models.Gemma3Backbone(
        **config,
        vision_encoder=keras_hub.models.Gemma3VisionEncoder(**VISION_CONFIG) if vision else None,
    )
    randomize(reference, seed)
    path = str(tmp_path / f"keras_hub_{seed}.weights.h5")
    reference.save_weights(path)
    ours = gemma3_tf.Gemma3Backbone(
        **config, vision_encoder=gemma3_tf.Gemma3VisionEncoder(**VISION_CONFIG) if vision else None
    )
    ours.load_weights(path)
    return reference, ours


def text_only(vision_reference):
    """keras-hub's text backbone holding `vision_reference`'s text weights: the reference for a vision model given
    zero images, as keras-hub's vision model itself fails on them where oneDNN is on (its Conv2D returns an empty
    batch unchanged)."""
    reference = keras_hub.models.Gemma3Backbone(**TEXT_CONFIG)
    vision_weights = {weight.path: weight for weight in vision_reference.weights}
    for weight in reference.weights:
        weight.assign(vision_weights[weight.path])
    return reference


def save_keras_hub_preset(path, tiny_proto, vision=False, max_shard_size=10):
    """A preset directory written by keras-hub itself; returns its backbone."""
    encoder = keras_hub.models.Gemma3VisionEncoder(**VISION_CONFIG) if vision else None
    backbone = keras_hub.models.Gemma3Backbone(**TEXT_CONFIG, vision_encoder=encoder)
    randomize(backbone)
    backbone.save_to_preset(str(path), max_shard_size=max_shard_size)
    keras_hub.models.Gemma3Tokenizer(tiny_proto).save_to_preset(str(path))
    return backbone


def text_inputs(batch=3, length=12, vocabulary_size=64, seed=1):
    """Right-padded rows of different lengths (row 0 is full)."""
    rng = np.random.default_rng(seed)
    padding_mask = np.zeros((batch, length), "int32")
    for row, valid in enumerate(np.linspace(length, length // 2, batch).astype(int)):
        padding_mask[row, :valid] = 1
    token_ids = rng.integers(1, vocabulary_size, (batch, length)).astype("int32") * padding_mask
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def vision_inputs(images_per_row, length=20, tokens_per_image=4, vocabulary_size=64, seed=2):
    """Rows with the given numbers of images (padded to the maximum), text around them, padding at the end."""
    rng = np.random.default_rng(seed)
    batch, max_images = len(images_per_row), max(images_per_row)
    inputs = text_inputs(batch, length, vocabulary_size, seed)
    inputs["images"] = rng.uniform(-1, 1, (batch, max_images, 28, 28, 3)).astype("float32")
    inputs["vision_mask"] = np.zeros((batch, length), "int32")
    inputs["vision_indices"] = np.zeros((batch, max_images * tokens_per_image), "int32")
    inputs["padding_mask"][:] = 1
    inputs["padding_mask"][-1, length - 3:] = 0
    for row, count in enumerate(images_per_row):
        inputs["images"][row, count:] = 0.0
        # An image block starts after BOS and two text tokens; blocks are two tokens apart.
        positions = np.concatenate(
            [3 + image * (tokens_per_image + 2) + np.arange(tokens_per_image) for image in range(count)]
        ).astype("int32") if count else np.zeros((0,), "int32")
        inputs["vision_indices"][row, : len(positions)] = positions
        inputs["vision_mask"][row, positions] = 1
    inputs["token_ids"] = inputs["token_ids"] * inputs["padding_mask"]
    return inputs
