"""How the decoder applies its `EinsumDense` kernels: as matmuls laid out for the decode step, where each
weight is read once per generated token and the layout decides the speed. Each takes the layer's own kernel
(LoRA included); a weight-only int8 kernel is cast inside the matmul and its output divided by the scale.
Keras' other quantization modes run the layer's own call."""

from keras import ops

from gemma3_tf.quantization import in_own_matmul


def heads_projection(dense, x):
    """`dense` ("btd,ndh->btnh", kernel [N, D, H]) applied to x [B, T, D] -> [B, T, N, H].

    Done as a matmul batched over heads: XLA lowers the einsum with a copy of the transposed
    kernel on every call, 4x slower when decoding one token.
    """
    if not in_own_matmul(dense):
        return dense(x)
    kernel = ops.cast(dense.kernel, x.dtype)
    batch, length = ops.shape(x)[0], ops.shape(x)[1]
    heads, dim, head_dim = kernel.shape
    flat = ops.broadcast_to(ops.reshape(x, (1, batch * length, dim)), (heads, batch * length, dim))
    out = ops.reshape(ops.matmul(flat, kernel), (heads, batch, length, head_dim))
    return _dequantized(dense, ops.transpose(out, (1, 2, 0, 3)))


def heads_output(dense, x):
    """`dense` ("btnh,nhd->btd", kernel [N, H, D]) applied to x [B, T, N, H] -> [B, T, D], batched over heads
    then summed. Not one matmul by the kernel as [N * H, D]: under XLA that decoded the 270M at 14.5
    tokens/s against 18.6 at batch 1 (and was only 5% faster without XLA)."""
    if not in_own_matmul(dense):
        return dense(x)
    kernel = ops.cast(dense.kernel, x.dtype)
    batch, length = ops.shape(x)[0], ops.shape(x)[1]
    heads, head_dim, dim = kernel.shape
    per_head = ops.transpose(ops.reshape(x, (batch * length, heads, head_dim)), (1, 0, 2))
    out = ops.sum(ops.matmul(per_head, kernel), axis=0)
    return _dequantized(dense, ops.reshape(out, (batch, length, dim)))


def feedforward(dense, x):
    """`dense` ("btd,df->btf", kernel [D, F]) applied to x [B, T, D] -> [B, T, F].

    One 2-D matmul of the [B * T, D] rows: without XLA the [B, T, D] einsum runs as a broadcasting
    BatchMatMulV2, whose oneDNN kernel took 38 of the 66 ms per token of the float32 270M's served decode
    (`benchmarks/served_profile.py`), 4x the time its 280 MB of weights take to read. Served float32 270M
    (Xeon with AMX, oneDNN on, single runs): 15.1 -> 16.0 tokens/s at batch 1 without XLA; with XLA 18.7 / 9.2
    -> 18.9 / 10.2 at batch 1 / 8.
    """
    if not in_own_matmul(dense):
        return dense(x)
    kernel = ops.cast(dense.kernel, x.dtype)
    batch, length = ops.shape(x)[0], ops.shape(x)[1]
    dim, features = kernel.shape
    out = ops.matmul(ops.reshape(x, (batch * length, dim)), kernel)
    return _dequantized(dense, ops.reshape(out, (batch, length, features)))


def _dequantized(dense, output):
    """`dense`'s output: as computed, or divided by the per-channel scale of a weight-only int8 kernel (Keras
    keeps it in the output's layout: [1, 1, N, H], [1, 1, D] or [1, 1, F])."""
    if dense.quantization_mode is None:
        return output
    return output / ops.cast(dense.kernel_scale, output.dtype)
