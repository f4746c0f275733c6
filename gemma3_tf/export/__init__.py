"""SavedModel export for TF Serving: `export_model(causal_lm, "BASE/NAME")` writes `BASE/NAME/N/`."""

import os
import tempfile
import time

import tensorflow as tf

from gemma3_tf.export.layout import MODELS_CONFIG, WARMUP_FILE, versions, write_models_config
from gemma3_tf.export.layout import write_version, write_warmup_requests
from gemma3_tf.export.op_check import check_servable_ops, foreign_ops, saved_model_ops
from gemma3_tf.export.session_check import NotServableError, check_session_path, run_signature
from gemma3_tf.export.signatures import MAX_IMAGE_BYTES, ServingModule
from gemma3_tf.tokenizer import VOCAB_FILENAME

__all__ = ["export_model", "ServingModule", "check_servable_ops", "check_session_path", "foreign_ops",
           "run_signature", "saved_model_ops", "versions", "write_models_config", "MODELS_CONFIG",
           "NotServableError", "WARMUP_FILE"]


def export_model(causal_lm, model_base_path, version=None, max_length=2048, jit_compile=False,
                 max_image_bytes=MAX_IMAGE_BYTES, warmup=True, log=print):
    """Exports `causal_lm` (with its preprocessor) as `model_base_path/VERSION/` for TF Serving.

    Args:
        model_base_path: `BASE/NAME`; NAME is the model name clients use. `BASE/models.config`
            is (re)written to list every model under BASE.
        version: an int; default one above the highest present (1 for the first).
        max_length: most tokens per request row, prompt and new tokens together.
        jit_compile: XLA for the decode loop (see `ServingModule`).
        warmup: write `assets.extra/tf_serving_warmup_requests` (one request per signature).
    Returns: the version directory. Before it gets its final name, the version is loaded as TF Serving
    loads it and answers the warmup requests (written or not); a version that does not is deleted
    and NotServableError says why.
    """
    start = time.time()
    model_base_path = os.path.abspath(model_base_path)
    version = version if version is not None else (versions(model_base_path) or [0])[-1] + 1
    if int(version) < 1:
        raise ValueError(f"`version` must be a positive integer. Received: {version}")
    with tempfile.TemporaryDirectory() as scratch:
        vocabulary = os.path.join(scratch, VOCAB_FILENAME)
        with open(vocabulary, "wb") as file:
            file.write(causal_lm.preprocessor.tokenizer.proto)
        module = ServingModule(causal_lm, max_length, jit_compile, vocabulary, max_image_bytes)
        requests = warmup_requests(causal_lm.backbone.vision_encoder is not None)

        def write(directory):
            tf.saved_model.save(module, directory, signatures=module.signatures)
            check_servable_ops(directory)
            check_session_path(directory, requests)
            if warmup:
                write_warmup_requests(directory, os.path.basename(model_base_path), requests)

        path = write_version(model_base_path, int(version), write)
    write_models_config(os.path.dirname(model_base_path))
    log(f"Exported {path} in {time.time() - start:.1f} s (signatures: {', '.join(module.signatures)}; "
        f"XLA {'on' if jit_compile else 'off'}).")
    return path


def warmup_requests(vision):
    """One small request per signature (and one with an image for a vision model), so that a server's
    first real request finds every function and branch traced, and the export check runs them all."""
    requests = [("serving_default", {"prompt": ["Hello"], "max_new_tokens": [2]}),
                ("score", {"prompt": ["Hello"], "response": [" world"]}),
                ("embed", {"prompt": ["Hello"]})]
    if vision:
        image = tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8)).numpy()
        requests.append(("serving_default", {"prompt": ["Describe"], "images": [[image]], "max_new_tokens": [2]}))
    return requests
