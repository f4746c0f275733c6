"""Refusals of bad input, each with a stable code and the field it concerns.

In Python a refusal is an `InputError` (a ValueError) with `code` and `field`. Inside a graph (the exported
SavedModel) it is an assertion whose message begins with the code, then the field in backticks, with the
row where the request has rows: "[too_long] `prompt[3]` is too long: ...". TensorFlow (and TF Serving)
returns that message as an InvalidArgumentError. `serving.refusals.parse` reads it back, for the clients and
the batch-inference job, which run the SavedModel without this package: they map codes, never the wording
of a message.
"""

import re

import numpy as np
import tensorflow as tf

CODES = {
    "no_rows": "a request with no prompts",
    "too_many_rows": "more prompts in one request than the export takes",
    "empty_prompt": "a prompt that is empty or blank",
    "too_long": "a prompt over the length limit (tokens or bytes)",
    "invalid_parameter": "a generation parameter out of its range or of the wrong shape",
    "invalid_inputs": "model inputs with missing or unexpected keys",
    "invalid_shape": "inputs whose shapes do not fit together",
    "invalid_dtype": "an input of the wrong dtype",
    "invalid_value": "an input with values out of their range (token ids, pixels, indices)",
    "images_not_supported": "images for a model without a vision encoder",
    "too_many_images": "more images in a prompt than the model takes",
    "image_count_mismatch": "a number of <start_of_image> markers other than the number of images",
    "image_unreadable": "bytes that are not a JPEG, PNG, GIF or BMP image",
    "image_too_large": "an image over the byte or pixel limit",
}


def _known(code):
    if code not in CODES:
        raise KeyError(f"{code!r} is not a refusal code: {sorted(CODES)}")
    return code


class InputError(ValueError):
    """A refusal of bad input in Python: `code` (a key of CODES) and `field`, the input it concerns."""

    def __init__(self, code, field, message):
        super().__init__(message)
        self.code, self.field = _known(code), field


def graph_message(code, message):
    """`message` (which begins with the field in backticks) as a graph assertion gives it."""
    return f"[{_known(code)}] {message}"


def assert_that(ok, code, message, *values):
    """A scalar graph assertion: `message` formatted with `values` (tensors, at `{}`), with its code."""
    return tf.debugging.Assert(ok, [tf.strings.format(graph_message(code, message), values)])


def assert_rows(ok, code, message, *values):
    """A graph assertion that all of `ok` [B] holds; else the refusal `message` formatted with the first
    failing row, then that row's entries of `values` (each [B])."""
    # A 0 appended: argmin of an empty batch would fail ("Reduction axis 0 is empty") before the assertion.
    first_bad = tf.argmin(tf.concat([tf.cast(ok, tf.int32), [0]], axis=0), output_type=tf.int32)
    row_values = [tf.concat([value, tf.zeros([1], value.dtype)], axis=0)[first_bad] for value in values]
    return tf.debugging.Assert(tf.reduce_all(ok), [tf.strings.format(graph_message(code, message),
                                                                     [first_bad, *row_values])])


def raise_first(checks):
    """`assert_rows` eagerly, for a list of its arguments (ok, code, message, *values): raises the `InputError`
    of the first check that fails (its field is the first name in backticks in its message)."""
    for ok, code, message, *values in checks:
        ok = np.asarray(ok)
        if not ok.all():
            row = int(np.argmin(ok))
            text = message.format(row, *(np.asarray(value)[row] for value in values))
            raise InputError(code, re.match(r"`(\w+)", message).group(1), text)
