"""How the decoder applies its `EinsumDense` kernels: as matmuls laid out for the decode step, where each
weight is read once per generated token and the layout decides the speed.

Training and in-process generation read each layer's own kernel (LoRA included). Inside `serving_kernels`, as
the export traces its functions, each layer reads instead a copy of its kernel stored [outputs, inputs], the
contraction last (the layout of a PyTorch Linear): one 2-D matmul of the B * T rows by its transpose. oneDNN's
bfloat16 kernels pair values along the contraction, so with the Keras layout each call reorders the weight
first; XLA's dots read this layout in place. It took every served option up on a Xeon with AMX (float32 with
XLA 21.0 -> 24.0 decode tokens/s at batch 1, plain bfloat16 18.0 -> 20.1 at batch 8; benchmarks/FINDINGS.md).
One copy of q, k and v together, and of both gates, measured no faster.

Keras int8 layers (`gemma3_tf.quantization`) run `int8_matmul` (or `weight_only_int8_matmul`) by their int8
serving kernel in an export. In training and in process, the weight-only ones are applied as float layers are, and
the others run their own call, as do Keras' other quantization modes.
"""

import contextlib
import math

import tensorflow as tf
from keras import ops

from gemma3_tf.quantization import (int8_matmul, is_int8, kernel_matmul, serving_copy, stored_as_bits,
                                    weight_only_int8_matmul)


@contextlib.contextmanager
def serving_kernels(denses, embedding=None):
    """While open, each of `denses` (EinsumDense layers applied by the functions below) that is float or Keras int8
    reads a copy of its current kernel as [outputs, inputs] (LoRA merged in), and a 16-bit float `embedding` (the
    tied token embedding) a copy of its table; 16-bit float copies hold their bits (`quantization.serving_copy`).
    Yields the copies: what an export saves in place of the kernels. On exit the layers read their own again."""
    denses = [dense for dense in denses if dense.quantization_mode in (None, "int8")]
    sixteen_bit = embedding is not None and embedding.quantization_mode is None and stored_as_bits(
        embedding.variable_dtype)
    try:
        for dense in denses:
            outputs, contracted = _kernel_axes(dense)
            kernel = ops.convert_to_tensor(dense.kernel)
            rows = math.prod(kernel.shape[axis] for axis in outputs)
            kernel = tf.reshape(tf.transpose(kernel, outputs + contracted), (rows, -1))
            dense.serving_kernel = tf.Variable(serving_copy(kernel), trainable=False,
                                               name=f"{dense.name}_serving_kernel")
        if sixteen_bit:
            embedding.serving_table = tf.Variable(serving_copy(ops.convert_to_tensor(embedding.embeddings)),
                                                  trainable=False, name=f"{embedding.name}_serving_table")
        yield [dense.serving_kernel for dense in denses] + ([embedding.serving_table] if sixteen_bit else [])
    finally:
        for layer in denses + ([embedding] if sixteen_bit else []):
            for copy in ("serving_kernel", "serving_table"):
                if copy in vars(layer):
                    delattr(layer, copy)


def backbone_serving_kernels(backbone):
    """`serving_kernels` for all of `backbone`'s decoder projections and its tied token embedding: the copies an
    export saves, and that anything computing as the export does must read."""
    return serving_kernels([dense for block in backbone.transformer_layers for dense in block.projections],
                           backbone.token_embedding)


def heads_projection(dense, x):
    """`dense` ("btd,ndh->btnh", kernel [N, D, H]) applied to x [B, T, D] -> [B, T, N, H].

    Done as a matmul batched over heads: XLA lowers the einsum with a copy of the transposed
    kernel on every call, 4x slower when decoding one token.
    """
    if hasattr(dense, "serving_kernel"):
        return _by_serving_kernel(dense, x)
    if not _reads_its_kernel(dense):
        return dense(x)
    kernel = ops.cast(dense.kernel, x.dtype)
    batch, length = ops.shape(x)[0], ops.shape(x)[1]
    heads, dim, head_dim = kernel.shape
    flat = ops.broadcast_to(ops.reshape(x, (1, batch * length, dim)), (heads, batch * length, dim))
    out = ops.reshape(ops.matmul(flat, kernel), (heads, batch, length, head_dim))
    return _descaled(dense, ops.transpose(out, (1, 2, 0, 3)))


def heads_output(dense, x):
    """`dense` ("btnh,nhd->btd", kernel [N, H, D]) applied to x [B, T, N, H] -> [B, T, D], batched over heads
    then summed. Not one matmul by the kernel as [N * H, D]: under XLA that decoded the 270M at 14.5
    tokens/s against 18.6 at batch 1 (and was only 5% faster without XLA)."""
    if hasattr(dense, "serving_kernel"):
        return _by_serving_kernel(dense, x)
    if not _reads_its_kernel(dense):
        return dense(x)
    kernel = ops.cast(dense.kernel, x.dtype)
    batch, length = ops.shape(x)[0], ops.shape(x)[1]
    heads, head_dim, dim = kernel.shape
    per_head = ops.transpose(ops.reshape(x, (batch * length, heads, head_dim)), (1, 0, 2))
    out = ops.sum(ops.matmul(per_head, kernel), axis=0)
    return _descaled(dense, ops.reshape(out, (batch, length, dim)))


def feedforward(dense, x):
    """`dense` ("btd,df->btf", kernel [D, F]) applied to x [B, T, D] -> [B, T, F].

    One 2-D matmul of the [B * T, D] rows: without XLA the [B, T, D] einsum runs as a broadcasting
    BatchMatMulV2, whose oneDNN kernel took 38 of the 66 ms per token of the float32 270M's served decode
    (`benchmarks/served_profile.py`), 4x the time its 280 MB of weights take to read. Served float32 270M
    (Xeon with AMX, oneDNN on, single runs): 15.1 -> 16.0 tokens/s at batch 1 without XLA; with XLA 18.7 / 9.2
    -> 18.9 / 10.2 at batch 1 / 8.
    """
    if hasattr(dense, "serving_kernel"):
        return _by_serving_kernel(dense, x)
    if not _reads_its_kernel(dense):
        return dense(x)
    kernel = ops.cast(dense.kernel, x.dtype)
    batch, length = ops.shape(x)[0], ops.shape(x)[1]
    dim, features = kernel.shape
    out = ops.matmul(ops.reshape(x, (batch * length, dim)), kernel)
    return _descaled(dense, ops.reshape(out, (batch, length, features)))


def _reads_its_kernel(dense):
    """Whether the functions above apply `dense`'s kernel themselves: float, or Keras' weight-only int8 without LoRA
    (then `_descaled`; by Keras' own call, an einsum, the 270M's in-process int8 decode ran at 22.9 tokens/s, by
    these functions 31.1, `benchmarks/weight_options.py`). Other layers run their own call."""
    weight_only_int8 = dense.quantization_mode == "int8" and not is_int8(dense) and not dense.lora_enabled
    return dense.quantization_mode is None or weight_only_int8


def _descaled(dense, out):
    """`out` of an int8 kernel divided by its per-channel scale, which Keras keeps in the output's layout."""
    return out / ops.cast(dense.kernel_scale, out.dtype) if dense.quantization_mode == "int8" else out


def _kernel_axes(dense):
    """`dense`'s kernel axes as (outputs in the output's order, contracted in the input's order)."""
    inputs, output = dense.equation.split("->")
    inputs, kernel = inputs.split(",")
    outputs = sorted((axis for axis in kernel if axis in output), key=output.index)
    contracted = sorted((axis for axis in kernel if axis not in output), key=inputs.index)
    return [kernel.index(axis) for axis in outputs], [kernel.index(axis) for axis in contracted]


def _by_serving_kernel(dense, x):
    """x [B, T, *contracted] -> [B, T, *outputs] by `dense.serving_kernel` [O, C]. (The output dims come from the
    layer's `output_shape`, [T, *outputs]: reading `dense.kernel` here would put the Keras kernel, and with LoRA its
    adapters, into the traced function, and so into the export.)"""
    kernel = dense.serving_kernel
    rows = tf.reshape(x, (-1, kernel.shape[1]))
    if kernel.dtype == tf.int8:  # Keras keeps the scale in the output's layout: [1, 1, N, H], [1, 1, D] or [1, 1, F]
        matmul = int8_matmul if is_int8(dense) else weight_only_int8_matmul
        out = matmul(kernel, tf.reshape(dense.kernel_scale, [-1]), rows)
    else:
        out = kernel_matmul(kernel, rows, dense.variable_dtype if kernel.dtype == tf.int16 else None)
    # [B, T] read once (it was read twice per matmul: 15 of each exported layer's 422 graph nodes per matmul).
    shape = tf.concat([tf.shape(x)[:2], dense.partial_output_shape[1:]], axis=0)
    return tf.reshape(out, shape)
