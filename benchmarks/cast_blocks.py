"""How big a block `quantization.kernel_matmul` should convert under XLA: one kernel's product at `--rows` rows in
an XLA decode-like loop (the kernel read on each pass, as in the export's decode), by block size.

    .venv/bin/python benchmarks/cast_blocks.py [--shape 262144 640] [--rows 2 8] [--dtype bfloat16]
        [--quantized_rows] [--log2_blocks 24 22 21 20 19 18] [--json_out FILE]

At more than one row XLA's CPU dot reads a float32 copy of a 16-bit or int8 kernel, made on each call, one block at
a time. An int8 kernel whose rows are quantized too (`--dtype int8 --quantized_rows`: Keras' int8, an int8 x int8
dot, `int8_matmul`) is read as it is, a block at a time too; a float32 one (`--dtype float32`) whole, which this
measures against its blocks (`quantization._in_block_loop`). The default shape is the 270M's tied logits table
[outputs, inputs]. The first row of each row count is the same kernel stored in float32, multiplied whole (with
`--quantized_rows`, the next one the int8 kernel whole). Best of 3 timings of 10 passes after a warm one.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from benchmarks.host import cpu  # noqa: E402
from gemma3_tf import quantization  # noqa: E402


def kernel(shape, dtype):
    """A random kernel as an export stores it: bfloat16 as its bits (`serving_copy`), int8 as it is."""
    weights = tf.random.stateless_normal(shape, seed=[0, 1], stddev=0.05)
    if dtype == "int8":
        return tf.Variable(tf.cast(tf.clip_by_value(tf.round(weights * 1000), -127, 127), tf.int8)), None
    if dtype == "bfloat16":
        return tf.Variable(quantization.serving_copy(tf.cast(weights, tf.bfloat16))), tf.bfloat16
    return tf.Variable(weights), None


def ms_per_pass(weights, float_dtype, rows, quantized_rows=False, float32_blocks=False):
    """One compiled loop of `n` passes, each a product that the next pass's rows depend on."""
    scale = tf.ones([weights.shape[0]])

    @tf.function(jit_compile=True)
    def passes(x, n):
        def body(i, x, total):
            with quantization.compiled_by_xla():
                if quantized_rows:
                    y = quantization.int8_matmul(weights, scale, x)
                elif float32_blocks:  # `kernel_matmul` multiplies a float32 kernel whole
                    y = quantization._in_block_loop(weights, lambda part: quantization._product(part, x, None),
                                                    x.dtype)
                else:
                    y = quantization.kernel_matmul(weights, x, float_dtype)
            return i + 1, x + tf.cast(tf.reduce_max(y) * 1e-9, x.dtype), total + tf.reduce_sum(y[:, :4])
        return tf.while_loop(lambda i, *_: i < n, body, (0, x, tf.zeros([], rows.dtype)))[2]

    one, eleven = tf.constant(1), tf.constant(11)
    passes(rows, one).numpy()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        passes(rows, one).numpy()
        middle = time.perf_counter()
        passes(rows, eleven).numpy()
        best = min(best, ((time.perf_counter() - middle) - (middle - start)) / 10 * 1000)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=2, default=[262144, 640], help="[outputs, inputs]")
    parser.add_argument("--rows", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "int8", "float32"])
    parser.add_argument("--quantized_rows", action="store_true", help="with --dtype int8: int8 x int8 products")
    parser.add_argument("--log2_blocks", type=int, nargs="+", default=[24, 22, 21, 20, 19, 18])
    parser.add_argument("--json_out", default=None)
    args = parser.parse_args()
    if args.quantized_rows and args.dtype != "int8":
        parser.error("--quantized_rows needs --dtype int8")
    weights, float_dtype = kernel(args.shape, args.dtype)
    reference = weights if args.dtype == "float32" else kernel(args.shape, "float32")[0]  # one 671 MB table, not two
    rows_dtype = tf.bfloat16 if args.dtype == "bfloat16" else tf.float32
    # A kernel of more than CAST_BLOCK_ELEMENTS weights branches on the rows, to blocks of XLA_CAST_BLOCK_ELEMENTS; one
    # of at most CAST_BLOCK_ELEMENTS is multiplied whole.
    in_blocks, whole = min(quantization.CAST_BLOCK_ELEMENTS, args.shape[0] * args.shape[1] - 1), 2**62
    print(f"{cpu()}\n\n| rows | kernel | block (weights) | ms per product |\n|---|---|---|---|")
    results = []
    for count in args.rows:
        rows = tf.cast(tf.random.stateless_normal([count, args.shape[1]], seed=[2, 3]), rows_dtype)
        # (kernel, block): None is the same kernel stored in float32, multiplied whole; 0 the kernel itself, whole.
        tested = "int8 x int8" if args.quantized_rows else args.dtype
        cases = [("float32", None)] + [(tested, 0)] * args.quantized_rows + [(tested, 2**log2)
                                                                            for log2 in args.log2_blocks]
        for dtype, block in cases:
            if block is None:
                quantization.CAST_BLOCK_ELEMENTS = whole
                ms = ms_per_pass(reference, None, tf.cast(rows, tf.float32))
            else:
                quantization.CAST_BLOCK_ELEMENTS = whole if block == 0 else in_blocks
                quantization.XLA_CAST_BLOCK_ELEMENTS = block
                ms = ms_per_pass(weights, float_dtype, rows, args.quantized_rows, args.dtype == "float32")
            label = "-" if block is None else "whole" if block == 0 else f"2^{block.bit_length() - 1}"
            print(f"| {count} | {dtype} | {label} | {ms:.1f} |", flush=True)
            results.append({"rows": count, "dtype": dtype, "block_elements": block, "ms": ms})
    if args.json_out:
        with open(args.json_out, "w") as file:
            json.dump({"command": " ".join(sys.argv), "cpu": cpu(), "shape": args.shape, "results": results}, file,
                      indent=1)


if __name__ == "__main__":
    main()
