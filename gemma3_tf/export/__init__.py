"""SavedModel export for TF Serving: `export_model(causal_lm, "BASE/NAME")` writes `BASE/NAME/N/`."""

import os
import tempfile
import time

import tensorflow as tf

from gemma3_tf import filesystem
from gemma3_tf.export.layout import BATCHING_PARAMETERS, MODELS_CONFIG, WARMUP_FILE, versions
from gemma3_tf.export.layout import write_batching_parameters, write_models_config, write_version, write_warmup_requests
from gemma3_tf.export.op_check import check_servable_ops, foreign_ops, saved_model_ops
from gemma3_tf.export.session_check import NotServableError, check_session_path, run_signature
from gemma3_tf.export.signatures import ServingModule
from gemma3_tf.export.warmup import DEFAULT_BATCH_SIZES, DEFAULT_WARMUP_PROMPT_TOKENS, check_requests, warmup_requests
from gemma3_tf.layers.projections import backbone_serving_kernels
from gemma3_tf.request_limits import LIMITS_FILE, ServingLimits
from gemma3_tf.tokenizer import VOCAB_FILENAME

__all__ = ["export_model", "ServingModule", "check_servable_ops", "check_session_path", "foreign_ops",
           "run_signature", "saved_model_ops", "versions", "write_models_config", "BATCHING_PARAMETERS",
           "MODELS_CONFIG", "NotServableError", "WARMUP_FILE", "LIMITS_FILE", "ServingLimits"]


def export_model(causal_lm, model_base_path, version=None, max_length=ServingLimits.max_length, jit_compile=False,
                 max_rows=ServingLimits.max_rows, max_prompt_bytes=None, max_image_bytes=ServingLimits.max_image_bytes,
                 max_image_pixels=ServingLimits.max_image_pixels, warmup=True, batch_sizes=DEFAULT_BATCH_SIZES,
                 warmup_prompt_tokens=DEFAULT_WARMUP_PROMPT_TOKENS, log=print):
    """Exports `causal_lm` (with its preprocessor) as `model_base_path/VERSION/` for TF Serving.

    Args:
        model_base_path: `BASE/NAME`; NAME is the model name clients use. `BASE/models.config`
            is (re)written to list every model under BASE, and `BASE/batching_parameters.txt` to
            allow `batch_sizes`.
        version: an int; default one above the highest present (1 for the first).
        max_length, max_rows, max_prompt_bytes, max_image_bytes, max_image_pixels: what one request may hold,
            checked in the graph and written to `assets.extra/limits.json` (see `ServingLimits`; max_prompt_bytes
            None: as many bytes as `max_length` tokens can span).
        jit_compile: XLA for the decode loop (see `ServingModule`).
        warmup: write `assets.extra/tf_serving_warmup_requests`: each signature at each of
            `batch_sizes` (and, with XLA, each prompt bucket up to `warmup_prompt_tokens`).
    Returns: the version directory. Before it gets its final name, the version is loaded as TF Serving
    loads it and answers one request per signature (and one with an image); a version that does not
    is deleted and NotServableError says why.
    """
    start = time.time()
    model_base_path = filesystem.absolute(model_base_path)
    version = version if version is not None else (versions(model_base_path) or [0])[-1] + 1
    if int(version) < 1:
        raise ValueError(f"`version` must be a positive integer. Received: {version}")
    limits = ServingLimits(max_length, max_rows, max_prompt_bytes or 0, max_image_bytes, max_image_pixels)
    if max(batch_sizes) > limits.max_rows:
        raise ValueError(f"`batch_sizes` go up to {max(batch_sizes)}, over `max_rows`={limits.max_rows}: TF Serving's "
                         "merged batches would be refused.")
    # Open until the version is written: `tf.saved_model.save` traces the functions again (its save context is part
    # of the trace cache key), and each trace must read the serving kernels.
    with tempfile.TemporaryDirectory() as scratch, backbone_serving_kernels(causal_lm.backbone):
        vocabulary = os.path.join(scratch, VOCAB_FILENAME)
        with open(vocabulary, "wb") as file:
            file.write(causal_lm.preprocessor.tokenizer.proto)
        module = ServingModule(causal_lm, limits, jit_compile, vocabulary)
        vision = causal_lm.backbone.vision_encoder is not None

        def write(directory):
            tf.saved_model.save(module, directory, signatures=module.signatures)
            check_servable_ops(directory)
            limits.write(directory)
            signature_defs = check_session_path(directory, check_requests(vision))
            if warmup:
                requests = warmup_requests(causal_lm.preprocessor.tokenizer, vision, jit_compile, batch_sizes,
                                           warmup_prompt_tokens)
                write_warmup_requests(directory, os.path.basename(model_base_path), requests, signature_defs)

        path = write_version(model_base_path, int(version), write)
    write_models_config(os.path.dirname(model_base_path))
    write_batching_parameters(os.path.dirname(model_base_path), batch_sizes)
    log(f"Exported {path} in {time.time() - start:.1f} s (signatures: {', '.join(module.signatures)}; "
        f"XLA {'on' if jit_compile else 'off'}).")
    return path
