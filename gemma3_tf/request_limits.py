"""How much one request may hold. The exported graph refuses more before it does work of that size; the
preprocess job refuses images over the same pixel limit, and batch inference checks its batches against it.

TF Serving has no limits of its own on what a request holds (its gRPC takes messages up to 2 GB), and
the costly work (tokenizing, the prefill's O(length^2) attention, a KV cache and logits per row) happens
in the graph: so the checks are in the graph, where every server runs them, ahead of that work. They are
recorded in `assets.extra/limits.json` for clients and pipelines to read.
"""

import dataclasses
import json
import os

# Larger images are refused before decoding: a 10000 x 10000 PNG of one colour is 316 KB (measured), and decoding
# it takes 300 MB (1.2 GB more as the float32 the resize starts from). 50 MP takes the 48 MP of today's phones.
MAX_IMAGE_PIXELS = 50_000_000

LIMITS_FILE = os.path.join("assets.extra", "limits.json")
# Bytes of prompt text allowed per token of `max_length`: the longest pieces of Gemma 3's vocabulary are 48
# bytes (16 em dashes, measured over its 262144 pieces), so a longer prompt cannot fit: refusing it by its
# bytes refuses nothing that could run.
PROMPT_BYTES_PER_TOKEN = 48


@dataclasses.dataclass(frozen=True)
class ServingLimits:
    """Args:
        max_length: most tokens per row: the prompt (with BOS and image tokens) and the new tokens.
        max_rows: most prompts per request. A row costs a KV cache and a vocabulary of logits per step
            (1 GB per step for 1000 rows of the 270M, measured), so a request may not hold many more than a
            merged batch. TF Serving's merged batches (`batching_parameters.txt`) must fit in it.
        max_prompt_bytes: most bytes of a prompt (or a `score` response) before tokenizing; 0 means
            `PROMPT_BYTES_PER_TOKEN * max_length`.
        max_image_bytes: most bytes of one encoded image.
        max_image_pixels: most pixels of one image, read from its header before it is decoded.
    """

    max_length: int = 2048
    max_rows: int = 64
    max_prompt_bytes: int = 0
    max_image_bytes: int = 20 << 20
    max_image_pixels: int = MAX_IMAGE_PIXELS

    def __post_init__(self):
        if not self.max_prompt_bytes:
            object.__setattr__(self, "max_prompt_bytes", PROMPT_BYTES_PER_TOKEN * self.max_length)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{field.name}` must be a positive integer. Received: {value!r}")

    def write(self, export_dir):
        import tensorflow as tf  # here, not at the top: the command line reads the defaults without TensorFlow

        path = os.path.join(export_dir, LIMITS_FILE)
        tf.io.gfile.makedirs(os.path.dirname(path))
        with tf.io.gfile.GFile(path, "w") as file:
            file.write(json.dumps(dataclasses.asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def read(cls, export_dir):
        """The limits an export was written with, or None for an export that predates the file."""
        import tensorflow as tf

        path = os.path.join(export_dir, LIMITS_FILE)
        if not tf.io.gfile.exists(path):
            return None
        with tf.io.gfile.GFile(path) as file:
            return cls(**json.load(file))
