"""Tensor layouts of other frameworks and their conversion to and from our Keras kernels.

PyTorch-style checkpoints (HF safetensors, GGUF after dequantization) store a
dense kernel as (out, in); Keras as (in, out). Our attention kernels keep the
heads apart: query/key/value (heads, hidden, head_dim), output (heads, head_dim, hidden).
"""

import numpy as np

NONE = "none"
TRANSPOSE = "transpose"  # (out, in) <-> (in, out)
HEADS_IN = "heads_in"  # (heads * head_dim, hidden) <-> (heads, hidden, head_dim)
HEADS_OUT = "heads_out"  # (hidden, heads * head_dim) <-> (heads, head_dim, hidden)
CONV = "conv"  # (out, in, height, width) <-> (height, width, in, out)
PLUS_ONE = "plus_one"  # llama.cpp stores RMSNorm scales with Gemma's `1 +` folded in


def to_keras(array, layout, keras_shape):
    """`array` in `layout` rearranged into a Keras weight of `keras_shape`."""
    array = np.asarray(array)
    if layout == TRANSPOSE:
        return array.T
    if layout == HEADS_IN:
        heads, hidden, head_dim = keras_shape
        return array.reshape(heads, head_dim, hidden).transpose(0, 2, 1)
    if layout == HEADS_OUT:
        heads, head_dim, hidden = keras_shape
        return array.reshape(hidden, heads, head_dim).transpose(1, 2, 0)
    if layout == CONV:
        return array.transpose(2, 3, 1, 0)
    if layout == PLUS_ONE:
        return array - 1.0
    return array


def from_keras(array, layout):
    """The inverse of `to_keras`: a Keras weight in the other framework's `layout`."""
    array = np.asarray(array)
    if layout == TRANSPOSE:
        return array.T
    if layout == HEADS_IN:
        heads, hidden, head_dim = array.shape
        return array.transpose(0, 2, 1).reshape(heads * head_dim, hidden)
    if layout == HEADS_OUT:
        heads, head_dim, hidden = array.shape
        return array.transpose(2, 0, 1).reshape(hidden, heads * head_dim)
    if layout == CONV:
        return array.transpose(3, 2, 0, 1)
    if layout == PLUS_ONE:
        return array + 1.0
    return array


def expected_shape(keras_shape, layout):
    """The shape a tensor must have in `layout` to become a Keras weight of `keras_shape`."""
    return from_keras(np.empty(keras_shape, np.int8), layout).shape
