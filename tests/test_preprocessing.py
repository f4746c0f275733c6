"""Gemma3CausalLMPreprocessor and Gemma3ImageConverter against keras-hub's, and string generation."""

import io

import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import gemma3_tf
from gemma3_tf.preprocessing import Gemma3CausalLMPreprocessor, Gemma3ImageConverter, chat_prompt
from keras_hub_oracle import TEXT_CONFIG, VISION_CONFIG, randomize

PROMPTS = ["Hello world", "The quick brown fox jumps <start_of_image> over", "a <start_of_image> b <start_of_image>"]


def png(width, height, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), pixels


@pytest.fixture(scope="module")
def preprocessors(tiny_proto):
    ours = Gemma3CausalLMPreprocessor(gemma3_tf.Gemma3Tokenizer(tiny_proto), Gemma3ImageConverter(28),
                                      sequence_length=40, num_vision_tokens_per_image=4)
    reference = keras_hub.models.Gemma3CausalLMPreprocessor(
        keras_hub.models.Gemma3Tokenizer(tiny_proto),
        keras_hub.layers.Gemma3ImageConverter(image_size=(28, 28), scale=1 / 127.5, offset=-1.0,
                                              crop_to_aspect_ratio=False),
        sequence_length=40, num_vision_tokens_per_image=4)
    return ours, reference


def test_generate_preprocess_matches_keras_hub(preprocessors):
    ours, reference = preprocessors
    images = [[], [png(40, 30, 1)[1]], [png(28, 28, 2)[1], png(50, 20, 3)[1]]]
    ours_out = ours.generate_preprocess({"prompts": PROMPTS, "images": images})
    reference_images = np.zeros((3, 2, 40, 50, 3), "float32")  # keras-hub takes one padded array per batch
    for row, row_images in enumerate(images):
        for index, image in enumerate(row_images):
            reference_images[row, index, : image.shape[0], : image.shape[1]] = image
    # keras-hub resizes the padded array, so compare image tensors per image below, not through it.
    reference_out = reference.generate_preprocess({"prompts": PROMPTS, "images": reference_images})
    for key in ("token_ids", "padding_mask", "vision_mask", "vision_indices"):
        np.testing.assert_array_equal(np.asarray(ours_out[key]).astype("int32"),
                                      np.asarray(reference_out[key]).astype("int32"), err_msg=key)
    expected = tf.image.resize(tf.constant(images[1][0], tf.float32), [28, 28]) / 127.5 - 1.0
    np.testing.assert_allclose(ours_out["images"][1, 0], expected, atol=1e-6)
    assert ours_out["images"].shape == (3, 2, 28, 28, 3)


def test_image_converter_decodes_bytes_like_arrays():
    encoded, pixels = png(33, 17)
    converter = Gemma3ImageConverter(28)
    np.testing.assert_allclose(converter(encoded), converter(pixels), atol=1e-6)
    assert float(tf.reduce_min(converter(pixels))) >= -1.0 and float(tf.reduce_max(converter(pixels))) <= 1.0


def test_training_call_masks_the_prompt(preprocessors):
    ours, _ = preprocessors
    x, y, weights = ours({"prompts": ["Hello"], "responses": [" world"]})
    prompt = [ours.tokenizer.start_token_id] + ours.tokenizer("Hello").numpy().tolist()
    response = ours.tokenizer(" world").numpy().tolist() + [ours.tokenizer.end_token_id]
    tokens = prompt + response
    assert x["token_ids"][0, : len(tokens) - 1].numpy().tolist() == tokens[:-1]
    assert y[0, : len(tokens) - 1].numpy().tolist() == tokens[1:]
    expected = [0.0] * (len(prompt) - 1) + [1.0] * len(response)
    assert weights[0, : len(tokens) - 1].numpy().tolist() == expected
    assert weights[0, len(tokens) - 1:].numpy().sum() == 0


def test_generate_preprocess_in_tf_data(preprocessors):
    ours, _ = preprocessors
    text_only = Gemma3CausalLMPreprocessor(ours.tokenizer, sequence_length=16)
    dataset = tf.data.Dataset.from_tensor_slices(["Hello world", "fox"]).batch(2).map(text_only.generate_preprocess)
    batch = next(iter(dataset))
    eager = text_only.generate_preprocess(["Hello world", "fox"])
    np.testing.assert_array_equal(batch["token_ids"], eager["token_ids"])


@pytest.mark.parametrize("inputs, message", [
    ([""], r"`prompts\[0\]` is empty"),
    (["x " * 50], r"`prompts\[0\]` is \d+ tokens .* the maximum is `sequence_length`=40"),
    ({"prompts": ["<start_of_image>" * 3], "images": [[b"a", b"b", b"c"]]},
     r"has 3 <start_of_image>; at most `max_images_per_prompt`=2"),
    ({"prompts": ["<start_of_image>"], "images": [[b"not an image"]]},
     r"`images\[0\]\[0\]` is not a readable image"),
    ({"prompts": ["<start_of_image>"], "images": [[]]}, r"has 1 <start_of_image> but `images\[0\]` holds 0"),
    ({"prompt": ["x"]}, r"`inputs` must hold 'prompts'"),
])
def test_bad_inputs_are_named(preprocessors, inputs, message):
    with pytest.raises(ValueError, match=message):
        preprocessors[0].generate_preprocess(inputs)


def test_chat_prompt():
    assert chat_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]) == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n")
    with pytest.raises(ValueError, match=r"`turns\[0\]` must be"):
        chat_prompt([{"role": "assistant", "content": "x"}])


def test_generate_strings_and_token_inputs(tiny_proto):
    backbone = gemma3_tf.Gemma3Backbone(**dict(TEXT_CONFIG, vocabulary_size=400, final_logit_soft_cap=None),
                                        vision_encoder=gemma3_tf.Gemma3VisionEncoder(**VISION_CONFIG))
    randomize(backbone, scale=0.5)
    preprocessor = Gemma3CausalLMPreprocessor(gemma3_tf.Gemma3Tokenizer(tiny_proto), Gemma3ImageConverter(28),
                                              sequence_length=40, num_vision_tokens_per_image=4)
    causal_lm = gemma3_tf.Gemma3CausalLM(backbone, preprocessor)
    image = png(30, 30)[0]
    prompts = {"prompts": ["Hello", "fox <start_of_image> is"], "images": [[], [image]]}
    texts = causal_lm.generate(prompts, max_length=30, stop_token_ids=None)
    assert [text.startswith(prompt) for text, prompt in zip(texts, prompts["prompts"])] == [True, True]
    features = preprocessor.generate_preprocess(prompts, 30)
    new_ids = causal_lm.generate(features, max_length=30, stop_token_ids=None)
    assert [prompt + text for prompt, text in zip(prompts["prompts"], preprocessor.generate_postprocess(new_ids))] \
        == texts
    assert isinstance(causal_lm.generate("Hello", max_length=20), str)
    with pytest.raises(ValueError, match=r"`max_length` \(5\) must be greater than the longest prompt"):
        causal_lm.generate("Hello world fox", max_length=5)
