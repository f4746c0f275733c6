"""The op libraries an export needs beyond TensorFlow's own, registered before it is loaded.

tensorflow_model_server links TF Text's kernels in; a Python process registers them by loading TF Text's op
libraries. Importing `tensorflow_text` loads all 24 of them (and its Python modules): 0.12 GiB more RSS than
TensorFlow alone, in every server process and every batch inference worker (0.67 against 0.55 GiB, 2-core AMD
EPYC, TensorFlow 2.21, TF Text 2.21). Gemma 3's exports use five ops, all from `_sentencepiece_tokenizer.so`,
which alone costs 0.01 GiB. So only the libraries that register an op the graph uses are loaded.
"""

import functools
import glob
import importlib.util
import os

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2


def used_ops(saved_model: saved_model_pb2.SavedModel) -> set[str]:
    """Names of all ops in `saved_model`'s graphs, the function library's bodies included."""
    ops, functions = set(), set()
    for meta_graph in saved_model.meta_graphs:
        graph = meta_graph.graph_def
        ops.update(node.op for node in graph.node)
        for function in graph.library.function:
            functions.add(function.signature.name)
            ops.update(node.op for node in function.node_def)
    return ops - functions  # a call of a library function is a node named after it, not an op


@functools.cache
def _tf_text_op_libraries() -> tuple[str, ...]:
    """TF Text's op libraries (paths), found without importing TF Text."""
    spec = importlib.util.find_spec("tensorflow_text")
    if spec is None:
        return ()
    return tuple(sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], "python", "ops", "*.so"))))


def needed_op_libraries(path: str) -> list[str]:
    """The TF Text op libraries (paths) that register the ops of the SavedModel at `path` that TensorFlow does not.

    TensorFlow's own ops are those of `tf.raw_ops`, which op libraries loaded since do not join, so the answer does
    not depend on what this process has loaded. A library registers an op whose name it holds as a C string
    (REGISTER_OP's argument). An op that no library registers is left for the loader to name ("Op type not
    registered").
    """
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(path, "saved_model.pb"), "rb") as file:
        saved_model.ParseFromString(file.read())
    missing, needed = used_ops(saved_model) - set(dir(tf.raw_ops)), []
    for library in _tf_text_op_libraries():
        if not missing:
            break
        with open(library, "rb") as file:
            content = file.read()
        registered = {op for op in missing if b"\0" + op.encode() + b"\0" in content}
        if registered:
            needed.append(library)
            missing -= registered
    return needed


def register_op_libraries(path: str) -> None:
    """Loads the op libraries that the SavedModel at `path` needs (`needed_op_libraries`) into this process."""
    for library in needed_op_libraries(path):
        tf.load_op_library(library)
