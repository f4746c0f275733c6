"""Loads a SavedModel version as tensorflow_model_server does and answers requests, in whatever
TensorFlow runs this script (the project's, or the one TF Serving 2.20 is built on). It never imports
gemma3_tf: what is in the version directory is all there is.

    python tests/tf_serving_load.py VERSION_DIR '[{"signature": "serving_default", "inputs": {...}}]'

Binary strings (images) travel as {"b64": ...}, as in TF Serving's REST API. Prints one JSON line: {"tensorflow", "warmup_records", "outputs": [{alias: list}]}.
Steps, as TF Serving's SavedModelBundle: the session loader (MetaGraph tagged `serve`, restore op,
init op), the warmup replay (a failing record fails the load), then Session.run on the
SignatureDef's tensor names with its defaults for omitted inputs.
"""

import base64
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401  (TF Text's kernels, which tensorflow_model_server links in)
from tensorflow_serving.apis import prediction_log_pb2  # noqa: E402

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def run(session, signature_def, inputs):
    feeds = {signature_def.inputs[alias].name: tf.make_ndarray(proto)
             for alias, proto in signature_def.defaults.items() if alias not in inputs}
    feeds.update({signature_def.inputs[alias].name: np.asarray(value) for alias, value in inputs.items()})
    return session.run({alias: info.name for alias, info in signature_def.outputs.items()}, feeds)


def from_json(value):
    if isinstance(value, dict):
        return base64.b64decode(value["b64"])
    return [from_json(item) for item in value] if isinstance(value, list) else value


def jsonable(array):
    array = np.asarray(array)
    if array.dtype.kind in "OS":
        return np.vectorize(lambda text: text.decode("utf-8", "replace"), otypes=[object])(array).tolist()
    return array.tolist()


def main(path, requests):
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        signature_defs = tf.compat.v1.saved_model.loader.load(session, ["serve"], path).signature_def
        warmup = 0
        if os.path.exists(os.path.join(path, WARMUP_FILE)):
            for record in tf.compat.v1.io.tf_record_iterator(os.path.join(path, WARMUP_FILE)):
                request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
                signature_def = signature_defs[request.model_spec.signature_name or "serving_default"]
                for alias, proto in request.inputs.items():  # TF Serving refuses a tensor of another dtype
                    assert proto.dtype == signature_def.inputs[alias].dtype, (alias, proto.dtype)
                run(session, signature_def, {alias: tf.make_ndarray(proto) for alias, proto in request.inputs.items()})
                warmup += 1
        outputs = [{alias: jsonable(value) for alias, value in
                    run(session, signature_defs[request["signature"]],
                        {alias: from_json(value) for alias, value in request["inputs"].items()}).items()}
                   for request in requests]
    assert not any(name.startswith("gemma3_tf") for name in sys.modules)
    print(json.dumps({"tensorflow": tf.__version__, "warmup_records": warmup, "outputs": outputs}))


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
