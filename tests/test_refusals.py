"""Refusal codes: what TensorFlow makes of a graph refusal (gemma3_tf.refusals) parses back to its code, field
and row (serving.refusals), eagerly, in a tf.function and through TensorFlow's session (TF Serving's path);
Python refusals carry the same codes."""

import numpy as np
import pytest
import tensorflow as tf

from gemma3_tf import refusals
from gemma3_tf.refusals import InputError, assert_rows, assert_that
from serving.refusals import Refusal, parse


def graph_error(check, *inputs):
    """The message of the InvalidArgumentError `check(*inputs)` raises eagerly, in a tf.function and in a
    TF1 session."""
    def checked(*values):  # a tensor that waits for the assertion, as the export's outputs do
        with tf.control_dependencies([check(*values)]):
            return tf.constant(0)

    messages = []
    for run in (checked, tf.function(checked)):
        with pytest.raises(tf.errors.InvalidArgumentError) as raised:
            run(*[tf.constant(value) for value in inputs])
        messages.append(raised.value.message)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        placeholders = [tf.compat.v1.placeholder(tf.as_dtype(np.asarray(v).dtype), np.shape(v)) for v in inputs]
        with pytest.raises(tf.errors.InvalidArgumentError) as raised:
            session.run(checked(*placeholders), dict(zip(placeholders, inputs)))
        messages.append(raised.value.message)
    return messages


def test_row_refusals_parse_back_to_code_field_and_row():
    def check(top_p):
        return assert_rows((top_p > 0) & (top_p <= 1), "invalid_parameter", "`top_p[{}]` must be in (0, 1].")

    for message in graph_error(check, np.array([0.5, 0.9, 0.0], "float32")):
        assert parse(message).code in refusals.CODES
        assert parse(message) == Refusal("invalid_parameter", "top_p", 2, "`top_p[2]` must be in (0, 1].")
        assert parse(message).reason == "`top_p` must be in (0, 1]."


def test_refusals_with_values_and_nested_indices():
    def check(width):
        return assert_that(width <= 10, "image_too_large", "`images[{}][{}]` is {} pixels wide, over 10.", 1, 0, width)

    for message in graph_error(check, np.int32(12)):
        assert parse(message) == Refusal("image_too_large", "images", 1, "`images[1][0]` is 12 pixels wide, over 10.")
        assert parse(message).reason == "`images[0]` is 12 pixels wide, over 10."


def test_whole_request_refusals_have_no_row_and_other_errors_none():
    def check(rows):
        return assert_that(rows >= 1, "no_rows", "`prompt` holds no rows; a request needs at least one.")

    for message in graph_error(check, np.int32(0)):
        refusal = parse(message)
        assert (refusal.code, refusal.field, refusal.row) == ("no_rows", "prompt", None)
    assert parse("Graph execution error: ... Matrix size-incompatible: In[0]: [2,3], In[1]: [4,5]") is None
    assert parse("Invalid PNG data, size 42").code == "image_unreadable"


def test_codes_are_checked():
    with pytest.raises(KeyError, match="not a refusal code"):
        refusals.graph_message("too_lng", "`prompt` ...")
    with pytest.raises(KeyError, match="not a refusal code"):
        InputError("too_lng", "prompt", "...")
    error = InputError("too_long", "prompts", "`prompts[0]` is 9 tokens")
    assert isinstance(error, ValueError) and (error.code, error.field) == ("too_long", "prompts")


def test_preprocessor_refusals_carry_codes(tiny_proto):
    import gemma3_tf

    preprocessor = gemma3_tf.Gemma3CausalLMPreprocessor(gemma3_tf.Gemma3Tokenizer(tiny_proto), sequence_length=8)
    cases = {"empty_prompt": [" "], "too_long": ["a b c d e f g h i j k l m n o p q r s t u v w x y z"],
             "images_not_supported": ["<start_of_image> a"]}
    for code, prompts in cases.items():
        with pytest.raises(InputError) as raised:
            preprocessor.generate_preprocess(prompts)
        assert (raised.value.code, raised.value.field) == (code, "prompts")


def test_model_input_refusals_carry_codes():
    from gemma3_tf.input_validation import validate_inputs

    mask = np.ones((1, 2), "int32")
    cases = [({"token_ids": np.array([[5, 99]]), "padding_mask": mask}, ("invalid_value", "token_ids")),
             ({"token_ids": np.array([5, 9]), "padding_mask": mask}, ("invalid_shape", "token_ids")),
             ({"token_ids": np.array([[5.0, 9.0]]), "padding_mask": mask}, ("invalid_dtype", "token_ids")),
             ({"token_ids": np.array([[5, 9]]), "padding_mask": np.ones((1, 3), "int32")},
              ("invalid_shape", "padding_mask")),
             ({"token_ids": np.array([[5, 9]])}, ("invalid_inputs", "inputs"))]
    for inputs, expected in cases:
        with pytest.raises(InputError) as raised:
            validate_inputs(inputs, vocabulary_size=50)
        assert (raised.value.code, raised.value.field) == expected
