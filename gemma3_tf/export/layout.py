"""TF Serving's directory layout: `BASE/NAME/VERSION/` with warmup records, `BASE/models.config` and
`BASE/batching_parameters.txt`.

A version directory is written under a temporary name and renamed when complete, so a server
polling `BASE/NAME` never loads half of one.
"""

import os

import tensorflow as tf

from gemma3_tf import filesystem

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MODELS_CONFIG = "models.config"
BATCHING_PARAMETERS = "batching_parameters.txt"


def versions(model_base_path):
    """The version numbers present under `model_base_path` (complete versions only), sorted."""
    if not tf.io.gfile.isdir(model_base_path):
        return []
    return sorted(int(name.rstrip("/")) for name in tf.io.gfile.listdir(model_base_path)
                  if name.rstrip("/").isdigit()
                  and tf.io.gfile.exists(os.path.join(model_base_path, name.rstrip("/"), "saved_model.pb")))


def write_version(model_base_path, version, write):
    """Calls `write(directory)` on a temporary directory, then moves it to `model_base_path/version`.

    Locally the move is one rename. On a `scheme://` path the version is written to a local directory
    and copied with `saved_model.pb` last: renaming a directory there is a copy of object after object
    (GCS), or loses its files (ram://), and a server sees a version once `saved_model.pb` is in it.
    """
    final = os.path.join(model_base_path, str(version))
    if tf.io.gfile.exists(final):
        raise FileExistsError(f"Version {version} already exists at {final}; pass another `version`.")
    tf.io.gfile.makedirs(model_base_path)
    if filesystem.is_remote(model_base_path):
        with filesystem.local_directory(final, last=("saved_model.pb",)) as local:
            write(local)
        return final
    staging = os.path.join(model_base_path, f".staging-{version}-{os.getpid()}")
    try:
        write(staging)
        tf.io.gfile.rename(staging, final)
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
    return final


def write_warmup_requests(export_dir, model_name, requests, signature_defs):
    """`requests`: [(signature_name, {input: value})] -> `assets.extra/tf_serving_warmup_requests`,
    the PredictionLog records TF Serving replays before it marks a version available. Each tensor has
    its SignatureDef input's dtype (TF Serving refuses any other, and `[[]]` alone would be float)."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    path = os.path.join(export_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for signature_name, inputs in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature_name
            for key, value in inputs.items():
                dtype = tf.dtypes.as_dtype(signature_defs[signature_name].inputs[key].dtype)
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def write_models_config(base_path):
    """`base_path/models.config` (ModelServerConfig text format) naming every model under `base_path`, by
    absolute path: mount `base_path` at the same path in a TF Serving container and it reads as is."""
    base_path = filesystem.absolute(base_path)
    names = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(base_path)
                   if versions(os.path.join(base_path, name.rstrip("/"))))
    entries = "".join(f"  config {{\n    name: '{name}'\n    base_path: '{os.path.join(base_path, name)}'\n"
                      "    model_platform: 'tensorflow'\n  }\n" for name in names)
    path = os.path.join(base_path, MODELS_CONFIG)
    with tf.io.gfile.GFile(path, "w") as file:
        file.write(f"model_config_list {{\n{entries}}}\n")
    return path


def write_batching_parameters(base_path, allowed_batch_sizes, batch_timeout_micros=2000):
    """`base_path/batching_parameters.txt` for `tensorflow_model_server --enable_batching
    --batching_parameters_file=...` (BatchingParameters text format). TF Serving pads each merged
    batch to the lowest of `allowed_batch_sizes` that holds it, the shapes the warmup records cover.
    `pad_variable_length_inputs` stays off: it would pad `images` with a copy of a real image."""
    sizes = sorted(set(int(size) for size in allowed_batch_sizes))
    lines = [f"max_batch_size {{ value: {sizes[-1]} }}", f"batch_timeout_micros {{ value: {batch_timeout_micros} }}"]
    lines += [f"allowed_batch_sizes: {size}" for size in sizes]
    path = os.path.join(base_path, BATCHING_PARAMETERS)
    with tf.io.gfile.GFile(path, "w") as file:
        file.write("\n".join(lines) + "\n")
    return path
