"""Which ops a SavedModel's graph uses, and whether the stock `tensorflow_model_server` has them all.

TF Serving links TensorFlow's own kernels and TF Text's: an op from anywhere else (or a
Python callback, which would need the exporting process) would fail to load or to run there.
"""

import functools
import glob
import os

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})


def saved_model_ops(export_dir):
    """Names of all ops in the SavedModel's graphs, the function library's bodies included."""
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(export_dir, "saved_model.pb"), "rb") as file:
        saved_model.ParseFromString(file.read())
    ops = set()
    for meta_graph in saved_model.meta_graphs:
        graph = meta_graph.graph_def
        ops.update(node.op for node in graph.node)
        for function in graph.library.function:
            ops.update(node.op for node in function.node_def)
    # Calls of library functions are nodes named after the function, not ops.
    return ops - {f.signature.name for mg in saved_model.meta_graphs for f in mg.graph_def.library.function}


@functools.cache
def _tf_text_op_libraries():
    import tensorflow_text

    pattern = os.path.join(os.path.dirname(tensorflow_text.__file__), "python", "ops", "*.so")
    return tuple(tf.load_op_library(path) for path in sorted(glob.glob(pattern)))


def foreign_ops(export_dir):
    """{op: why} for the ops that are neither TensorFlow core nor TF Text, or that call back into Python."""
    core = set(dir(tf.raw_ops))
    found = {}
    for op in sorted(saved_model_ops(export_dir)):
        if op in PYTHON_OPS:
            found[op] = "calls back into Python"
        elif op not in core and not any(hasattr(library, op) for library in _tf_text_op_libraries()):
            found[op] = "not a TensorFlow core or TF Text op"
    return found


def check_servable_ops(export_dir):
    """Raises ValueError naming each op that TF Serving could not run."""
    found = foreign_ops(export_dir)
    if found:
        listed = ", ".join(f"{op} ({why})" for op, why in found.items())
        raise ValueError(f"The SavedModel at {export_dir} uses ops TF Serving cannot run: {listed}")
