"""The refusals of an exported Gemma 3 model, read back from its error messages: code, field and row.

The export writes them (`gemma3_tf.refusals`): "[too_long] `prompt[3]` is too long: ...", inside whatever
framing TensorFlow, TF Serving or a client adds. Free of TensorFlow and of gemma3_tf, for the clients and
the batch-inference workers, which run the SavedModel only.
"""

import dataclasses
import re

# The framing of an assertion's message: graphs and sessions give "assertion failed: [MESSAGE]", eager
# execution "Summarized data: b'MESSAGE'".
_FRAME_ENDS = {"assertion failed: [": "]", "Summarized data: b'": "'"}
_MESSAGE = re.compile(r"(?P<framed>assertion failed: \[|Summarized data: b')?\[(?P<code>[a-z_]+)\] "
                      r"(?P<text>`(?P<field>\w+)(?P<row>\[\d+\])?(?:\[\d+\])*`.*)")
# TensorFlow's own image decoders refuse truncated or damaged data that passed the export's header checks.
_IMAGE_DECODER_ERRORS = re.compile(r"(?i)invalid (png|jpeg|gif|bmp)|(png|jpeg|gif|bmp) data|decode")


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A refusal: its code (`gemma3_tf.refusals.CODES`), field, row (None for the whole request) and message
    (from the field on, as the model gave it)."""

    code: str
    field: str
    row: int | None
    message: str

    @property
    def reason(self):
        """The message as the reason of its row: without the row's index (`prompt[3]` -> `prompt`)."""
        if self.row is None:
            return self.message
        return self.message.replace(f"`{self.field}[{self.row}]", f"`{self.field}", 1)


def parse(message):
    """The `Refusal` in an error message of the model, or None for an error that is no refusal. TensorFlow's
    image decoders' own errors are `image_unreadable`."""
    match = _MESSAGE.search(message)
    if match is None:
        if _IMAGE_DECODER_ERRORS.search(message):
            return Refusal("image_unreadable", "images", None, message.strip().splitlines()[0][:500])
        return None
    text, row = match.group("text").strip(), match.group("row")
    if match.group("framed") and text.endswith(_FRAME_ENDS[match.group("framed")]):
        text = text[:-1]
    return Refusal(match.group("code"), match.group("field"), None if row is None else int(row[1:-1]), text)
