"""Refusals of bad input, each with a stable code and the field it concerns.

In Python a refusal is an `InputError` (a ValueError) with `code` and `field`. Inside a graph (the exported
SavedModel) it is an assertion whose message begins with the code, then the field in backticks, with the
row where the request has rows: "[too_long] `prompt[3]` is too long: ...". TensorFlow (and TF Serving)
returns that message as an InvalidArgumentError. `parse` reads it back: the batch-inference job maps codes
to its reason codes and rows, and no code outside this package reads the wording of a message.
"""

import dataclasses
import re

import tensorflow as tf

CODES = {
    "no_rows": "a request with no prompts",
    "too_many_rows": "more prompts in one request than the export takes",
    "empty_prompt": "a prompt that is empty or blank",
    "too_long": "a prompt over the length limit (tokens or bytes)",
    "invalid_parameter": "a generation parameter out of its range or of the wrong shape",
    "invalid_shape": "inputs whose shapes do not fit together",
    "images_not_supported": "images for a model without a vision encoder",
    "too_many_images": "more images in a prompt than the model takes",
    "image_count_mismatch": "a number of <start_of_image> markers other than the number of images",
    "image_unreadable": "bytes that are not a JPEG, PNG, GIF or BMP image",
    "image_too_large": "an image over the byte or pixel limit",
}
# The framing of an assertion's message: graphs and sessions give "assertion failed: [MESSAGE]", eager
# execution "Summarized data: b'MESSAGE'".
_FRAME_ENDS = {"assertion failed: [": "]", "Summarized data: b'": "'"}
_MESSAGE = re.compile(r"(?P<framed>assertion failed: \[|Summarized data: b')?\[(?P<code>[a-z_]+)\] "
                      r"(?P<text>`(?P<field>\w+)(?P<row>\[\d+\])?(?:\[\d+\])*`.*)")
# TensorFlow's own image decoders refuse truncated or damaged data after our header checks pass.
_IMAGE_DECODER_ERRORS = re.compile(r"(?i)invalid (png|jpeg|gif|bmp)|(png|jpeg|gif|bmp) data|decode")


class InputError(ValueError):
    """A refusal of bad input in Python: `code` (a key of CODES) and `field`, the input it concerns."""

    def __init__(self, code, field, message):
        if code not in CODES:
            raise KeyError(f"{code!r} is not a refusal code: {sorted(CODES)}")
        super().__init__(message)
        self.code, self.field = code, field


def graph_message(code, message):
    """`message` (which begins with the field in backticks) as a graph assertion gives it."""
    if code not in CODES:
        raise KeyError(f"{code!r} is not a refusal code: {sorted(CODES)}")
    return f"[{code}] {message}"


def assert_that(ok, code, message, *values):
    """A scalar graph assertion: `message` formatted with `values` (tensors, at `{}`), with its code."""
    return tf.debugging.Assert(ok, [tf.strings.format(graph_message(code, message), values)])


def assert_rows(ok, code, message):
    """A graph assertion that all of `ok` [B] holds; else the refusal `message` formatted with the first
    failing row (at `{}`)."""
    # A 0 appended: argmin of an empty batch would fail ("Reduction axis 0 is empty") before the assertion.
    first_bad = tf.argmin(tf.concat([tf.cast(ok, tf.int32), [0]], axis=0), output_type=tf.int32)
    return tf.debugging.Assert(tf.reduce_all(ok), [tf.strings.format(graph_message(code, message), first_bad)])


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A refusal read back from an error message: its code, field, row (None for the whole request) and
    text (the message from the field on, without the row)."""

    code: str
    field: str
    row: int | None
    text: str


def parse(message):
    """The `Refusal` in an error message of the model (TensorFlow's framing around it is skipped), or None
    for an error that is no refusal. TensorFlow's image decoders' own errors are `image_unreadable`."""
    match = _MESSAGE.search(message)
    if match is None:
        if _IMAGE_DECODER_ERRORS.search(message):
            return Refusal("image_unreadable", "images", None, message.strip().splitlines()[0][:500])
        return None
    field, row, text = match.group("field"), match.group("row"), match.group("text").strip()
    if match.group("framed") and text.endswith(_FRAME_ENDS[match.group("framed")]):
        text = text[:-1]
    if row is not None:
        text = text.replace(f"`{field}{row}", f"`{field}", 1)
    return Refusal(match.group("code"), field, None if row is None else int(row[1:-1]), text)
