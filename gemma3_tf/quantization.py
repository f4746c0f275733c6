"""Int8: Keras' own int8 quantization (`Model.quantize`: int8 weights with one scale per output channel), the int8
matmuls an export runs, how XLA is kept reading int8 and bfloat16 weights at their own size, and how a large kernel
is multiplied a block at a time where that is faster (`kernel_matmul`).

Two forms, by layer:
- The tied logits and the feedforward gates (INT8_LAYERS) also quantize each row of their inputs to int8 on the
  fly, by its absolute maximum (Keras' default int8): the matmul is then an int8 x int8 dot into int32, which XLA
  runs at int8's bytes (the 270M's 262144 x 640 logits matvec: 9.0 ms against 26 ms in float32, 2-core AMD EPYC,
  AVX2; 28 against 80 ms at 8 rows; with AVX512_VNNI 5.7 against 22 ms, 19 against 58 ms at 8 rows). The int8
  dot has two conditions: the kernel laid out [outputs, inputs] (as [inputs, outputs]: 795 ms), and its int8
  input kept out of the dot's fusion (`_unfused`).
- The attention projections and the feedforward output (WEIGHT_ONLY_INT8_LAYERS) keep float inputs (Keras'
  `Int8QuantizationConfig(activation_quantizer=None)`): their inputs carry the residual stream's outlier
  channels, and the gated GELU's, and quantizing them too took the real 270M's top-1 agreement with float32 over
  256 greedy steps on three prompts to 97.9% (`benchmarks/weight_options.py`), under issue 21's 98%. Their int8
  kernels are converted inside the dot, which then reads them at 1 byte a weight: stored float32, they were half
  the bytes of a decode step (served int8 with --jit_compile, batch 1, AVX512 EPYC: 57.8 -> 86.3 tokens/s).
Without XLA, TensorFlow's int8 dot is 30x slower than its float32 one, so functions TensorFlow runs itself (the
plain export, the score and embed signatures) compute the same products in float.

In a decode loop XLA hoists loop-invariant work out of the loop, and the conversion of a weight to the dot's
type (int8 to int32 or float32; bfloat16 to float32, as XLA's CPU dots run) is loop-invariant: the loop then read
a 4-byte copy of every weight, and int8 decoded no faster than float32 (`read_per_call` says how that is kept in
the loop). An export saves 16-bit float weights as their bits (`serving_copy`), which the loop takes as they are.
"""

import contextlib
import contextvars
import math

# TensorFlow and Keras are imported inside the functions: the CLI reads WEIGHT_OPTIONS for `--help`, which must not
# load TensorFlow.
WEIGHT_OPTIONS = ("int8",)
INT8_LAYERS = ("token_embedding", "ffw_gating", "ffw_gating_2")  # int8 inputs too
WEIGHT_ONLY_INT8_LAYERS = ("query", "key", "value", "attention_output", "ffw_linear")
CAST_BLOCK_ELEMENTS = 2**24  # how much of a kernel `kernel_matmul` casts at once where the cast is a copy
# Under XLA at more than one row, how much of a kernel of more than one CAST_BLOCK_ELEMENTS block is multiplied (and
# converted) at a time (`_in_block_loop`): each block's float32 copy (8 MiB) stays in cache from the conversion that
# writes it to the dot that reads it. The bfloat16 270M's logits at 8 rows, in blocks of 2^24 / 2^22 / 2^21 / 2^20:
# 60.6 / 38.8 / 40.2 / 50.3 ms, float32's own dot 58.5 (`benchmarks/cast_blocks.py --rows 8`, 2-core AMD EPYC,
# avx512_bf16).
XLA_CAST_BLOCK_ELEMENTS = 2**21

_under_xla = contextvars.ContextVar("under_xla", default=False)


def is_int8(layer):
    """Whether `layer` (an EinsumDense or embedding) holds Keras int8 weights and quantizes its inputs: the form
    `int8_matmul` runs."""
    return layer.quantization_mode == "int8" and getattr(layer, "inputs_quantizer", None) is not None


def quantize_weights(model, option):
    """Quantizes `model`'s INT8_LAYERS and WEIGHT_ONLY_INT8_LAYERS in place; `option`: one of WEIGHT_OPTIONS."""
    if option not in WEIGHT_OPTIONS:
        raise ValueError(f"`quantize` must be one of {', '.join(WEIGHT_OPTIONS)}. Received: {option!r}")
    import gc
    from keras import quantizers
    # Keras runs `gc.collect()` for each layer it quantizes (`Layer.__delattr__`, as it drops the float kernel), a
    # scan of every object in the process: 20 of the 270M's 48 s. Frozen, the objects made before are left out of
    # those scans; each float kernel still goes with its last reference (RSS after, and peak, unchanged).
    frozen_here = gc.get_freeze_count() == 0
    if frozen_here:
        gc.freeze()
    try:
        model.quantize(option, filters=lambda layer: layer.name in INT8_LAYERS)
        model.quantize(config=quantizers.Int8QuantizationConfig(activation_quantizer=None),
                       filters=lambda layer: layer.name in WEIGHT_ONLY_INT8_LAYERS)
    finally:
        if frozen_here:
            gc.unfreeze()
    return model


@contextlib.contextmanager
def compiled_by_xla():
    """While open, matmuls trace the forms XLA runs fast, not those TensorFlow's own kernels do: int8 x int8 dots
    (`int8_matmul`), and low-precision kernels read on each call (`read_per_call`). For functions XLA compiles."""
    token = _under_xla.set(True)
    try:
        yield
    finally:
        _under_xla.reset(token)


def int8_matmul(kernel, kernel_scale, rows):
    """rows [R, C] (float) by an int8 `kernel` [O, C] with `kernel_scale` [O] -> [R, O] in the rows' dtype, as
    Keras' int8 call computes it: each row quantized by its absolute maximum, the int8 product divided by both
    scales."""
    import tensorflow as tf
    from keras import quantizers
    quantized, rows_scale = quantizers.abs_max_quantize(rows, axis=-1)
    if _under_xla.get():
        quantized = _unfused(quantized)
        # One row: a matrix-vector dot that XLA emits itself, converting the kernel inside (`read_per_call` keeps
        # that in a decode loop). More rows: a library call that reads the int8 kernel as it is, where
        # `read_per_call` would only copy the kernel on every call (the logits at 8 rows: 9.9 ms a step, 2-core
        # AVX512 EPYC); a kernel of more than one CAST_BLOCK_ELEMENTS block a block at a time (`_in_block_loop`),
        # which is faster: the 270M's logits at 2 / 4 / 8 rows took 13.1 / 15.8 / 18.8 ms whole, 12.3 / 15.6 / 16.3
        # in blocks of 2^21 (`benchmarks/cast_blocks.py --dtype int8 --quantized_rows`, 2-core AMD EPYC). XLA knows
        # the rows, and keeps one branch.
        def int8_product(part):
            return tf.linalg.matmul(part, quantized, transpose_b=True, output_type=tf.int32)
        if _blocks(kernel, CAST_BLOCK_ELEMENTS) == 1:
            rows_product = lambda: tf.linalg.matmul(quantized, kernel, transpose_b=True, output_type=tf.int32)
        else:
            rows_product = lambda: _in_block_loop(kernel, int8_product, tf.int32)
        product = tf.cond(tf.shape(quantized)[0] > 1, rows_product,
                          lambda: tf.transpose(int8_product(read_per_call(kernel, quantized))))
    else:  # integers below 2**24 in magnitude (|products| <= 127 * 127), summed in float
        product = kernel_matmul(kernel, tf.cast(quantized, rows.dtype))
    return tf.cast(product, rows.dtype) / (rows_scale * tf.cast(kernel_scale, rows.dtype))


def weight_only_int8_matmul(kernel, kernel_scale, rows):
    """rows [R, C] (float) by an int8 `kernel` [O, C] with `kernel_scale` [O] -> [R, O], as Keras' weight-only int8
    call computes it: the kernel converted to the rows' dtype inside the matmul, the product divided by the scale."""
    import tensorflow as tf
    return kernel_matmul(kernel, rows) / tf.cast(kernel_scale, rows.dtype)


def kernel_matmul(kernel, rows, float_dtype=None):
    """rows [R, C] by `kernel` [O, C] (any dtype; with `float_dtype`, the bits of such a kernel, `serving_copy`)
    -> [R, O] in the rows' dtype.

    As (W @ x^T)^T, not x @ W^T: without oneDNN, TensorFlow's (Eigen's) matmul with `transpose_b` takes 4.7x as
    long at 8 rows (the decoder's 126 matmuls, float32, 2-core AVX2 EPYC: 207 against 47 ms; 615 against 400 at
    128 rows); the two are equal with oneDNN and under XLA. Under XLA a kernel that is not float32 is converted
    inside the dot (`read_per_call`), and the rows go in through `_unfused`: fused, the attention output's
    [heads, head_dim] rows were indexed as such inside its dot, 5x slower than the same bytes read by the other
    matrix-vector dots (the 270M's 18 layers, a decode step: int8 5.1 against 1.1 ms, bfloat16 5.8 against 1.1;
    `XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true` and the TensorFlow profiler give such per-fusion times).
    """
    import tensorflow as tf
    if _under_xla.get():
        if (float_dtype or kernel.dtype) != tf.float32:
            rows = _unfused(rows)
        # A float32 kernel, or one of one block: no branch (one per weight-only int8 kernel took 0.15-0.2 GiB more
        # in the server). A float32 one is read as it is, at any size: the 270M's logits at 2 / 4 / 8 rows took 30 /
        # 31 / 33 ms whole (as W @ x^T, `_product`), 39 / 36 / 49 in blocks of 2^21 (`benchmarks/cast_blocks.py
        # --dtype float32`, 2-core AMD EPYC).
        if (float_dtype or kernel.dtype) == tf.float32 or _blocks(kernel, CAST_BLOCK_ELEMENTS) == 1:
            return _in_blocks(kernel, rows, float_dtype, block_elements=None)
        # One row: XLA's own matrix-vector dot, which converts a kernel as it reads it. More rows: a library dot on
        # a float32 copy of the kernel, made on each call, so a block at a time (`_in_block_loop`): whole, the
        # bfloat16 logits table's copy was a 640 MiB temporary, which the server then kept (+0.7 GiB at its first
        # 2-row request). XLA knows the rows, and keeps one branch.
        return tf.cond(tf.shape(rows)[0] > 1,
                       lambda: _in_block_loop(kernel, lambda part: _product(part, rows, float_dtype), rows.dtype),
                       lambda: _in_blocks(kernel, rows, float_dtype, block_elements=None))
    # Without XLA a cast is a copy of the kernel, made on each call: cast whole, the 270M's int8 logits table was a
    # 671 MB float32 temporary, which oneDNN's allocator (TensorFlow's CPU allocator where oneDNN is on) then kept:
    # the int8 server grew by 1 GiB at its first `score` request.
    cast = tf.as_dtype(float_dtype or kernel.dtype) != rows.dtype
    return _in_blocks(kernel, rows, float_dtype, CAST_BLOCK_ELEMENTS if cast else None)


def _in_blocks(kernel, rows, float_dtype, block_elements):
    """(W @ x^T)^T, the kernel read and cast in slices of its outputs of at most `block_elements` weights (None: at
    once), so that no copy of it is made whole."""
    import tensorflow as tf
    blocks = 1 if block_elements is None else _blocks(kernel, block_elements)
    size = math.ceil(kernel.shape[0] / blocks)
    products = []
    for start in range(0, kernel.shape[0], size):
        # A block after the last one's product: TensorFlow's executor ran every block's slice and cast at once (the
        # 270M's int8 logits table: 10 blocks of 64 MiB), which the allocator then kept. A 2000-token `score` of the
        # int8 export in a fresh process on TensorFlow's C++ loader: 2.02 -> 1.82 GiB, as fast.
        with tf.control_dependencies(products[-1:]):
            products.append(_product(kernel if blocks == 1 else kernel[start:start + size], rows, float_dtype))
    return tf.transpose(tf.concat(products, axis=0) if len(products) > 1 else products[0])


def _in_block_loop(kernel, product, dtype):
    """Under XLA: (W @ x^T)^T as `dtype`, W @ x^T computed `product(block)` for XLA_CAST_BLOCK_ELEMENTS weights of
    the kernel at a time, in a loop. A loop runs its blocks one after another, so one block's copy (a 16-bit or
    weight-only int8 kernel's, converted) exists at a time (unrolled and independent, XLA's concurrency-optimized
    scheduler converted all blocks at once), and the graph holds one block's ops however many there are (160
    unrolled blocks of 2^20 held the bfloat16 270M's server at 4.17 GiB after its warmup, this loop at 3.33;
    `benchmarks/served_memory.py`)."""
    import tensorflow as tf
    kernel = tf.convert_to_tensor(kernel)
    outputs, contracted = kernel.shape
    size = max(1, min(outputs, XLA_CAST_BLOCK_ELEMENTS // contracted))
    loops = outputs // size

    def block(start, size):
        return product(tf.slice(kernel, [start, 0], [size, contracted]))

    def body(i, products):
        return i + 1, products.write(i, block(i * size, size))
    products = tf.while_loop(lambda i, _: i < loops, body, (0, tf.TensorArray(dtype, size=loops)))[1]
    products = [tf.reshape(products.stack(), [loops * size, -1])]
    if outputs % size:
        products.append(block(loops * size, outputs % size))
    return tf.transpose(tf.concat(products, axis=0))


def _product(part, rows, float_dtype):
    """W @ x^T for a slice `part` of a kernel, read (`read_per_call`) and cast to the rows' dtype.

    Under XLA the product goes out through `_unfused`: else XLA folds the transpose that follows it into the dot,
    as x @ W^T, whose library call at more than one row took 1.5x as long (the 270M's 126 decoder projections,
    float32, at 8 rows: 37.7 against 25.1 ms, at 1 row 14.8 against 15.6, `benchmarks/projection_layouts.py
    --jit_compile`; served at batch 8, runs before and after: float32 10.4 -> 15.8 tokens/s a row, int8 20.2 ->
    25.0; 2-core AMD EPYC).
    """
    import tensorflow as tf
    product = tf.matmul(tf.cast(read_per_call(part, rows, float_dtype), rows.dtype), rows, transpose_b=True)
    return _unfused(product) if _under_xla.get() else product


def _blocks(kernel, block_elements):
    """How many slices of at most `block_elements` weights `kernel` [O, C] is cast in."""
    return math.ceil(kernel.shape[0] * kernel.shape[1] / block_elements)


def _unfused(tensor):
    """`tensor` (int8 within +-127, or float), through a reduce, which XLA neither fuses into a dot nor rewrites
    with one: XLA's CPU compiler fuses elementwise producers (the quantization) into a matrix-vector dot and emits
    the fusion as a loop, 3x slower than the dot alone (the logits matvec: 30 against 9.0 ms), and folds a transpose
    of a dot's result into the dot (`_product`)."""
    import tensorflow as tf
    lowest = -127 if tensor.dtype == tf.int8 else tensor.dtype.min
    return tf.reduce_max(tf.stack([tensor, tf.fill(tf.shape(tensor), tf.constant(lowest, tensor.dtype))]), axis=0)


def serving_copy(kernel):
    """`kernel` as an export saves it: a 16-bit float one as its bits (int16, read back by `read_per_call` and
    `lookup` given its `float_dtype`), any other as it is.

    XLA's CPU compiler copies what a decode loop gets from a 16-bit float weight: bitcast to integers (as
    `read_per_call` does it), the bitcast does not depend on the step, is hoisted out of the loop and emitted as a
    loop that writes a copy; and a gather from a bfloat16 table runs in float32, on a 4-byte copy of the table
    hoisted likewise. The bfloat16 270M's XLA decode held 1.14 GiB of such copies per call (a 2-byte one of every
    weight, a 4-byte one of the table; `XLA_FLAGS=--xla_dump_to`, its buffer assignment), and its server 5.2 GiB.
    Stored as integers, the weights go into the loop as they are.
    """
    import tensorflow as tf
    return tf.bitcast(kernel, tf.int16) if stored_as_bits(kernel.dtype) else kernel


def stored_as_bits(dtype):
    """Whether `serving_copy` saves a kernel of `dtype` as its bits: the 16-bit floats."""
    import tensorflow as tf
    return tf.as_dtype(dtype) in (tf.bfloat16, tf.float16)


def lookup(table, ids, float_dtype=None):
    """Rows `ids` [...] of `table` [V, D] -> [..., D]; with `float_dtype`, of the table whose bits `table` holds
    (`serving_copy`), gathered as integers.

    From the table's value, not the variable: TensorFlow's ResourceGather puts a variable in copy-on-read mode, in
    which every later read of it (the logits' matmul, each step) copies it whole. The plain bfloat16 270M's
    served decode spent 40 of its 169 ms of op time per token at batch 8 in those copies (335 MB each).
    """
    import tensorflow as tf
    rows = tf.gather(tf.convert_to_tensor(table), ids)
    return rows if float_dtype is None else tf.bitcast(rows, float_dtype)


def read_per_call(kernel, inputs, float_dtype=None):
    """`kernel` (with `float_dtype`, the 16-bit float kernel whose bits it holds, `serving_copy`); under
    `compiled_by_xla`, if it is not float32, through an identity that depends on `inputs`, so that XLA converts it
    inside the dot that reads it on every call, not once before a decode loop into a 4-byte copy that every step
    then reads. The identity: each weight's bits, as integers, at least a floor that is at most the lowest integer
    and made from `inputs` (as integers because XLA's CPU compiler computes bfloat16 arithmetic in float32, and the
    conversion before it was hoisted too).

    Measured on the real 270M, decode tokens/s at batch 1, XLA in process (2-core AMD EPYC, AVX512_BF16/VNNI,
    oneDNN on): int8 with every conversion hoisted 19.9, with the logits table read per call 36.7 (float32 19.7);
    with the export's kernels read per call, int8 56-65 and bfloat16 53-54 against about 27 with them hoisted
    (float32 26). Float32 kernels need no conversion, and the identity in their dots' fusions made XLA emit the
    dots as loops: the float32 decode ran at 7.5 tokens/s against 19.7.
    """
    import tensorflow as tf
    kernel = tf.convert_to_tensor(kernel)
    if _under_xla.get() and kernel.dtype != tf.float32:
        if stored_as_bits(kernel.dtype):  # a Keras variable in process: bitcast here
            float_dtype, kernel = kernel.dtype, serving_copy(kernel)
        floor = tf.minimum(tf.cast(tf.reduce_min(inputs), kernel.dtype), kernel.dtype.min)
        kernel = tf.maximum(kernel, floor)
    return kernel if float_dtype is None else tf.bitcast(kernel, float_dtype)
