"""The requests an export is checked with and the warmup records TF Serving replays before serving it.

With `--enable_batching`, tensorflow_model_server runs requests, warmup ones included, through its
BatchingSession, which refuses an input without a batch dimension ("Batching Run() input tensors
must have at least one dimension"): a SignatureDef default is a scalar, so every record gives every
input, one value per row. Its `allowed_batch_sizes` pad each merged batch to one of those sizes,
so one record per allowed size covers every shape a live request can take; an XLA export also
compiles once per prompt-length bucket (powers of two from MIN_BUCKET), so it gets one record per
(batch size, bucket) up to `prompt_tokens`.
"""

import tensorflow as tf

from gemma3_tf.export.signatures import GENERATE_DEFAULTS
from gemma3_tf.generation import MIN_BUCKET

DEFAULT_BATCH_SIZES = (1, 2, 4, 8)
DEFAULT_WARMUP_PROMPT_TOKENS = 64  # XLA exports: buckets 16, 32, 64 warmed (shorter prompts: no compile at use)


def _tiny_png():
    return tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8)).numpy()


def _generate(prompts, images=None):
    rows = len(prompts)
    inputs = {"prompt": prompts, "images": images if images is not None else [[]] * rows}
    inputs.update({name: [value] * rows for name, value in GENERATE_DEFAULTS.items()})
    inputs["max_new_tokens"] = [2] * rows  # the loop's shape does not depend on it; its running time does
    return "serving_default", inputs


def check_requests(vision):
    """One small request per signature (and one with an image for a vision model): the export check."""
    requests = [_generate(["Hello"]), ("score", {"prompt": ["Hello"], "response": [" world"]}),
                ("embed", {"prompt": ["Hello"]})]
    if vision:
        requests.append(_generate(["Describe"], [[_tiny_png()]]))
    return requests


def prompt_of_length(tokenizer, tokens):
    """A text prompt of at most `tokens` tokens (BOS included) and more than half as many."""
    words = tokens - 1
    while words > 0 and len(tokenizer.tokenize(" ".join(["hello"] * words))) + 1 > tokens:
        words -= 1
    return " ".join(["hello"] * max(words, 1))


def warmup_requests(tokenizer, vision, jit_compile, batch_sizes=DEFAULT_BATCH_SIZES,
                    prompt_tokens=DEFAULT_WARMUP_PROMPT_TOKENS):
    """The warmup records: every signature at every allowed batch size, every input per row."""
    requests = []
    buckets = [MIN_BUCKET]
    while jit_compile and buckets[-1] * 2 <= prompt_tokens:
        buckets.append(buckets[-1] * 2)
    for rows in batch_sizes:
        for bucket in buckets:
            requests.append(_generate([prompt_of_length(tokenizer, bucket)] * rows))
        if vision:
            requests.append(_generate(["Describe"] * rows, [[_tiny_png()]] * rows))
        requests += [("score", {"prompt": ["Hello"] * rows, "response": [" world"] * rows}),
                     ("embed", {"prompt": ["Hello"] * rows})]
    return requests
