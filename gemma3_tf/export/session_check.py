"""The export's last check: load the version as tensorflow_model_server does and answer its warmup requests.

TF Serving's SavedModelBundle loader (`tensorflow/cc/saved_model/loader.cc`) imports the MetaGraph
tagged `serve` into a Session, runs the saver's restore op and the init op, then runs each Predict
as `Session::Run` on the SignatureDef's tensor names, omitted inputs taken from its `defaults`.
`tf.compat.v1.saved_model.loader.load` is that loader in Python. `tf.saved_model.load` is not: it
rebinds function captures through the object graph, so it runs SavedModels that TF Serving cannot.
"""

import numpy as np
import tensorflow as tf
from tensorflow.python.util import deprecation


class NotServableError(ValueError):
    """The SavedModel does not load or answer through TF Serving's session path."""


def signature_feeds(signature_def, inputs):
    """`inputs` ({alias: array}, the SignatureDef's defaults for those omitted) -> ({tensor name: array},
    {output alias: tensor name}): a Session.run of the signature, as TF Serving makes it."""
    feeds = {signature_def.inputs[alias].name: tf.make_ndarray(proto) for alias, proto in
             signature_def.defaults.items() if alias not in inputs}
    feeds.update({signature_def.inputs[alias].name: np.asarray(value) for alias, value in inputs.items()})
    return feeds, {alias: info.name for alias, info in signature_def.outputs.items()}


def run_signature(session, signature_def, inputs):
    """`inputs` ({alias: array}, the SignatureDef's defaults for those omitted) -> {alias: array}."""
    feeds, fetches = signature_feeds(signature_def, inputs)
    return session.run(fetches, feeds)


def check_session_path(export_dir, requests):
    """Loads `export_dir` with TensorFlow's session loader and runs `requests` ([(signature, inputs)]).

    Returns the SignatureDefs. Raises NotServableError naming the step and the op that failed, e.g.
    a variable that the restore op never created.
    """
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        try:
            with deprecation.silence():  # it advises tf.saved_model.load, the loader TF Serving does not use
                meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        except (tf.errors.OpError, RuntimeError, ValueError) as error:
            raise NotServableError(f"{export_dir} does not load as TF Serving loads it: {_first_line(error)}") \
                from error
        for signature_name, inputs in requests:
            try:
                run_signature(session, meta_graph.signature_def[signature_name], inputs)
            except (tf.errors.OpError, KeyError, ValueError) as error:
                raise NotServableError(
                    f"{export_dir}: signature '{signature_name}' fails through TF Serving's session path: "
                    f"{_first_line(error)}") from error
    return dict(meta_graph.signature_def)


def _first_line(error):
    """The failing op's own message: not the "Graph execution error" framing, the Python stack of
    where the node was defined, or the node names."""
    message = getattr(error, "message", None) or str(error)
    framing = ("Graph execution error", "Detected at node", "[[", "<stack", "File ")
    return next((line.strip() for line in message.splitlines()
                 if line.strip() and not line[0].isspace() and not line.startswith(framing)), type(error).__name__)
