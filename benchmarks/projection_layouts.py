"""Which matmul form reads the decoder's kernels fastest: the 270M's 126 projections of one decode step (18
layers of q, k, v, attention output, two gates and the MLP output) at `--rows` rows, in a `tf.function`.

    .venv/bin/python benchmarks/projection_layouts.py [--rows 1 8 128] [--dtype float32] [--jit_compile]
        [--json_out FILE]

Forms: the Keras kernel [C, O] (x @ K); the serving kernel [O, C] as x @ W^T (`transpose_b`), as (W @ x^T)^T, and
as the export multiplies it (`quantization.kernel_matmul`, under XLA with `--jit_compile`: (W @ x^T)^T kept so,
where XLA would fold the transpose into the dot, which makes it x @ W^T). Best of 5 calls after two warm ones. Run
it with TF_ENABLE_ONEDNN_OPTS=0 and =1: TensorFlow's own (Eigen) matmuls and oneDNN's differ here.
"""

import argparse
import contextlib
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.host import cpu  # noqa: E402
from gemma3_tf import quantization  # noqa: E402

# (contracted, outputs) of one Gemma 3 270M decoder layer's projections.
LAYER = [(640, 1024), (640, 256), (640, 256), (1024, 640), (640, 2048), (640, 2048), (2048, 640)]
NUM_LAYERS = 18
FORMS = {
    "x @ K [C, O] (Keras layout)": lambda x, keras, serving: tf.matmul(x, keras),
    "x @ W^T, W [O, C] (transpose_b)": lambda x, keras, serving: tf.matmul(x, serving, transpose_b=True),
    "(W @ x^T)^T, W [O, C]": lambda x, keras, serving: tf.transpose(tf.matmul(serving, x, transpose_b=True)),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 128])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--jit_compile", action="store_true")
    parser.add_argument("--json_out", default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shapes = LAYER * NUM_LAYERS
    keras_kernels = [tf.Variable(tf.cast(rng.normal(size=shape).astype("float32"), args.dtype)) for shape in shapes]
    serving_kernels = [tf.Variable(tf.transpose(kernel)) for kernel in keras_kernels]

    def exported(x, keras, serving):
        with quantization.compiled_by_xla() if args.jit_compile else contextlib.nullcontext():
            return quantization.kernel_matmul(serving, x)
    forms = {**FORMS, "the export's (`kernel_matmul`)": exported}
    print(cpu(), f"XLA {'on' if args.jit_compile else 'off'}, {args.dtype}")
    results = []
    for rows in args.rows:
        x = tf.cast(tf.random.normal([rows, max(contracted for contracted, _ in LAYER)]), args.dtype)
        for name, form in forms.items():
            def step(x, form=form):
                return tf.add_n([tf.reduce_sum(tf.cast(form(x[:, :shape[0]], keras, serving), tf.float32))
                                 for shape, keras, serving in zip(shapes, keras_kernels, serving_kernels)])

            step = tf.function(step, jit_compile=args.jit_compile)
            step(x), step(x)
            times = []
            for _ in range(5):
                start = time.perf_counter()
                step(x).numpy()
                times.append(time.perf_counter() - start)
            results.append({"rows": rows, "form": name, "ms": min(times) * 1e3})
            print(f"  {rows:4d} rows  {name:34s} {min(times) * 1e3:8.1f} ms")
    if args.json_out:
        with open(args.json_out, "w") as file:
            json.dump({"command": " ".join([os.path.relpath(sys.executable), *sys.argv]), "cpu": cpu(),
                       "dtype": args.dtype, "jit_compile": args.jit_compile, "results": results}, file, indent=2)


if __name__ == "__main__":
    main()
