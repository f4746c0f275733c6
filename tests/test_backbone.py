"""The backbone and causal LM beyond keras-hub parity: graphs, dtypes, serialization, LoRA, dropout."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import gemma3_tf
from keras_hub_oracle import TEXT_CONFIG, VISION_CONFIG, randomize, text_inputs, vision_inputs


def make_backbone(vision=False, **overrides):
    vision_encoder = gemma3_tf.Gemma3VisionEncoder(**VISION_CONFIG, dtype=overrides.get("dtype")) if vision else None
    backbone = gemma3_tf.Gemma3Backbone(**dict(TEXT_CONFIG, **overrides), vision_encoder=vision_encoder)
    randomize(backbone, seed=7)
    return backbone


def test_zero_images_eager_in_graph_and_under_xla():
    backbone = make_backbone(vision=True)
    inputs = vision_inputs((0, 0))
    eager = np.asarray(backbone(inputs))

    @tf.function
    def forward(inputs):
        return backbone(inputs)

    # Graph rewrites reorder float sums: agreement to float32 rounding, not bit for bit.
    np.testing.assert_allclose(np.asarray(forward(inputs)), eager, atol=2e-5)
    np.testing.assert_allclose(np.asarray(tf.function(backbone.__call__, jit_compile=True)(inputs)), eager, atol=2e-5)
    # One traced function serves both 0 and 2 images: the image count is a dynamic dimension.
    spec = {key: tf.TensorSpec([None] * np.ndim(value), tf.as_dtype(value.dtype)) for key, value in inputs.items()}
    graph_forward = tf.function(backbone.__call__, input_signature=[spec])
    np.testing.assert_allclose(np.asarray(graph_forward(inputs)), eager, atol=2e-5)
    assert graph_forward(vision_inputs((2, 1))).shape == (2, 20, TEXT_CONFIG["hidden_dim"])


@pytest.mark.parametrize("dtype", ["bfloat16", "mixed_bfloat16"])
def test_low_precision_policies_track_float32(dtype):
    reference = make_backbone(vision=True)
    backbone = make_backbone(vision=True, dtype=dtype)
    backbone.set_weights(reference.get_weights())
    expected_variable_dtype = "float32" if dtype.startswith("mixed") else "bfloat16"
    assert {w.dtype for w in backbone.weights} == {expected_variable_dtype}
    inputs = vision_inputs((1, 2))
    output = backbone(inputs)
    assert keras.backend.standardize_dtype(output.dtype) == "bfloat16"
    expected = np.asarray(reference(inputs))
    actual = np.asarray(keras.ops.cast(output, "float32"))
    # The output is RMS-normalized (unit scale times 1 + w): bfloat16 keeps ~2-3 significant digits.
    assert np.abs(actual - expected).mean() < 0.05 * np.abs(expected).mean()


def test_config_round_trip_and_keras_file(tmp_path):
    backbone = make_backbone(vision=True, dropout=0.1, query_head_dim_normalize=False)
    config = backbone.get_config()
    restored = gemma3_tf.Gemma3Backbone.from_config(config)
    assert restored.get_config() == config
    assert not restored.query_head_dim_normalize and restored.dropout == 0.1

    causal_lm = gemma3_tf.Gemma3CausalLM(backbone)
    inputs = vision_inputs((2, 1))
    path = str(tmp_path / "model.keras")
    causal_lm.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, gemma3_tf.Gemma3CausalLM)
    assert isinstance(loaded.backbone.vision_encoder, gemma3_tf.Gemma3VisionEncoder)
    np.testing.assert_array_equal(np.asarray(loaded(inputs)), np.asarray(causal_lm(inputs)))


def test_lora_trains_adapters_on_query_and_value_and_the_vision_biases_as_keras_hub():
    backbone = make_backbone(vision=True)
    inputs = vision_inputs((1, 1))
    before = np.asarray(backbone(inputs))
    backbone.enable_lora(rank=2)
    trainable = sorted({w.path.rsplit("/", 2)[-2] + "/" + w.name for w in backbone.trainable_weights})
    assert trainable == [  # the vision projections' biases stay trainable, as in keras-hub (test_keras_hub_parity)
        "query/lora_kernel_a", "query/lora_kernel_b", "query_proj/bias", "query_proj/lora_kernel_a",
        "query_proj/lora_kernel_b", "value/lora_kernel_a", "value/lora_kernel_b", "value_proj/bias",
        "value_proj/lora_kernel_a", "value_proj/lora_kernel_b",
    ]
    # 7 decoder layers x (query, value) x two factors + 2 vision layers x (query_proj, value_proj) x (two factors
    # and the bias).
    assert len(backbone.trainable_weights) == 7 * 2 * 2 + 2 * 2 * 3
    np.testing.assert_allclose(np.asarray(backbone(inputs)), before, atol=1e-6)  # B starts at zero

    other = make_backbone()
    other.enable_lora(rank=2, target_layer_names=["ffw_linear"])
    assert {w.path.split("/")[-2] for w in other.trainable_weights} == {"ffw_linear"}
    with pytest.raises(ValueError, match="match no layer that supports LoRA"):
        make_backbone().enable_lora(rank=2, target_layer_names=["no_such_layer"])


def test_dropout_only_in_training():
    backbone = make_backbone(dropout=0.5)
    inputs = text_inputs()
    inference = np.asarray(backbone(inputs))
    np.testing.assert_array_equal(np.asarray(backbone(inputs, training=False)), inference)
    without_dropout = make_backbone(dropout=0.0)
    np.testing.assert_allclose(np.asarray(without_dropout(inputs)), inference, atol=1e-6)
    assert np.abs(np.asarray(backbone(inputs, training=True)) - inference).max() > 1e-2


def test_causal_lm_logits_use_the_tied_embedding():
    backbone = make_backbone(final_logit_soft_cap=None)
    inputs = text_inputs()
    logits = np.asarray(gemma3_tf.Gemma3CausalLM(backbone)(inputs))
    assert logits.shape == (3, 12, TEXT_CONFIG["vocabulary_size"])
    expected = np.asarray(backbone(inputs)) @ backbone.token_embedding.embeddings.numpy().T
    np.testing.assert_allclose(logits, expected, atol=1e-4)
