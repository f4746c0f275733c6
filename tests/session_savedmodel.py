"""A SavedModel loaded and run as tensorflow_model_server does, for the tests of our exports.

TensorFlow's session loader (`tf.compat.v1.saved_model.loader.load`: the MetaGraph tagged `serve`,
the saver's restore op, the init op) and `Session.run` on the SignatureDef's tensor names, with its
`defaults` for omitted inputs. Unlike `tf.saved_model.load`, it runs only what TF Serving runs.
"""

import tensorflow as tf
import tensorflow_text  # noqa: F401  (TF Text's kernels, which tensorflow_model_server links in)

from gemma3_tf.export import run_signature


class SessionSavedModel:
    """`generate(**inputs)`, `score(...)`, `embed(...)` -> {output: numpy array}; errors are the
    tf.errors.OpError a Session raises (InvalidArgumentError for a refused request)."""

    def __init__(self, path):
        self.path = path
        self.session = tf.compat.v1.Session(graph=tf.Graph())
        self.signature_defs = dict(tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path).signature_def)

    def run(self, signature_name, **inputs):
        return run_signature(self.session, self.signature_defs[signature_name], inputs)

    def generate(self, **inputs):
        return self.run("serving_default", **inputs)

    def score(self, **inputs):
        return self.run("score", **inputs)

    def embed(self, **inputs):
        return self.run("embed", **inputs)
