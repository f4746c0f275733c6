"""Where the served model's decode time goes: per-op time of a real Gemma 3 270M export, run through
TensorFlow's session loader (TF Serving's path), greedy, batch 1 (or `--batch` copies of the prompt).

    .venv/bin/python benchmarks/served_profile.py [--model_path BASE/NAME/VERSION] [--jit_compile]
        [--batch 1] [--steps 40] [--json_out FILE]

Exports the model into `--work_dir` unless `--model_path` is given (plain by default, `--jit_compile` for the
XLA export), then: the decode rate, 64 / (time for 72 new tokens - time for 8), as in issue 21; and one
`serving_default` call of `--steps` new tokens traced with `RunOptions.FULL_TRACE`, whose step stats give each
op type's time per generated token and share of all op time. The ops run on 2 threads, so op time exceeds
wall time.

With `--jit_compile` (an XLA export) the decode loop is one compiled cluster, so its parts are timed by XLA's
own trace events (`XLA_FLAGS=--xla_cpu_enable_xprof_traceme`, recorded by the TensorFlow profiler) and named
from XLA's dump of the optimized program (`--xla_dump_to`): each row is one TensorFlow op of the model (its
layer index left out, so a row sums all layers) with the shape XLA computes, its time per generated token
(prefill included, so use enough `--steps`), and how many times a token it runs.
"""

import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.host import cpu  # noqa: E402

PROMPT = b"The capital of France is"


def op_type(node):
    """The op type of a step-stats node: its timeline label reads "name = Type(inputs)"."""
    label = node.timeline_label
    return label.split(" = ")[1].split("(")[0].strip() if " = " in label else node.node_name


def xla_rows(profile_dir, hlo_files, steps):
    """[{"op", "shape", "ms_per_token", "per_token"}] from the XLA trace events under `profile_dir`, named by the
    instructions of `hlo_files` (XLA's optimized program, as text)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    instructions = {}  # HLO instruction name -> (TensorFlow op name without the layer index, shape)
    for path in hlo_files:
        for match in re.finditer(r'^\s+%(\S+) = (\S+) .*?op_name="([^"]+)"', open(path).read(), re.M):
            op = re.sub(r"_tfg_inlined_while_\d+", "", match.group(3))  # as the session's graph optimizer names it
            instructions[match.group(1)] = (re.sub(r"_\d+(_\d+)?/", "_N/", op), match.group(2))
    space = xplane_pb2.XSpace()
    [trace] = glob.glob(os.path.join(profile_dir, "**", "*.xplane.pb"), recursive=True)
    with open(trace, "rb") as file:
        space.ParseFromString(file.read())
    picos, calls = collections.Counter(), collections.Counter()
    for plane in space.planes:
        names = {key: metadata.name for key, metadata in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                key = instructions.get(names.get(event.metadata_id))
                if key:
                    picos[key] += event.duration_ps
                    calls[key] += 1
    return [{"op": op, "shape": shape, "ms_per_token": value / 1e9 / steps, "per_token": calls[op, shape] / steps}
            for (op, shape), value in picos.most_common()]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gemma3_270m_q4_k_m")
    parser.add_argument("--model_path", default=None, help="a version directory; default: export into --work_dir")
    parser.add_argument("--work_dir", default="/tmp/gemma3_tf_profile_bench")
    parser.add_argument("--jit_compile", action="store_true")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json_out", default=None)
    args = parser.parse_args()
    model_path = args.model_path
    if model_path is None:
        base = os.path.join(args.work_dir, "gemma3_xla" if args.jit_compile else "gemma3_plain")
        model_path = os.path.join(base, "1")
        if not os.path.exists(os.path.join(model_path, "saved_model.pb")):
            subprocess.run([sys.executable, "-m", "gemma3_tf.cli", "export", "--preset", args.preset,
                            "--model_base_path", base, "--version", "1", "--no-warmup"]
                           + (["--jit_compile"] if args.jit_compile else []), check=True)

    if args.jit_compile:
        hlo_dir, profile_dir = tempfile.mkdtemp(), tempfile.mkdtemp()
        os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_enable_xprof_traceme=true "
                                   f"--xla_dump_to={hlo_dir}")
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers TF Text's ops, as TF Serving's build has them
    from tensorflow.core.protobuf import config_pb2

    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        signature = tf.compat.v1.saved_model.loader.load(session, ["serve"], model_path).signature_def[
            "serving_default"]
        outputs = {alias: info.name for alias, info in signature.outputs.items()}

        def generate(new_tokens, **run_args):
            feeds = {signature.inputs["prompt"].name: np.array([PROMPT] * args.batch),
                     signature.inputs["max_new_tokens"].name: np.int32(new_tokens)}
            start = time.perf_counter()
            result = session.run(outputs, feeds, **run_args)
            assert (result["num_tokens"] == new_tokens).all(), "the prompt stopped early: pick another"
            return time.perf_counter() - start

        generate(8), generate(72)  # compiles and warms both shapes
        decode_tok_s = 64 / (generate(72) - generate(8))
        if args.jit_compile:
            compiled_before = set(glob.glob(os.path.join(hlo_dir, "*after_optimizations.txt")))
            generate(args.steps)  # compiles the shape of `--steps` new tokens, if not yet compiled
            hlo_files = set(glob.glob(os.path.join(hlo_dir, "*after_optimizations.txt"))) - compiled_before
            tf.profiler.experimental.start(profile_dir)
            elapsed = generate(args.steps)
            tf.profiler.experimental.stop()
        else:
            metadata = tf.compat.v1.RunMetadata()
            generate(args.steps, options=config_pb2.RunOptions(trace_level=config_pb2.RunOptions.FULL_TRACE),
                     run_metadata=metadata)
    if args.jit_compile:
        hlo_files = hlo_files or glob.glob(os.path.join(hlo_dir, "*after_optimizations.txt"))
        rows = xla_rows(profile_dir, hlo_files, args.steps)
        total = sum(row["ms_per_token"] for row in rows)
        print(f"{model_path}, batch {args.batch}: decode {decode_tok_s:.1f} tokens/s; XLA's parts "
              f"{total:.1f} ms per token ({elapsed * 1e3 / args.steps:.1f} ms wall)")
        rows = rows[:args.top]
        for row in rows:
            print(f"  {row['ms_per_token']:7.3f} ms/token {row['per_token']:5.0f}x  {row['shape']:24s} {row['op']}")
        write_json(args, model_path, decode_tok_s, total, rows)
        return
    micros = collections.Counter()
    for device in metadata.step_stats.dev_stats:
        for node in device.node_stats:
            micros[op_type(node)] += node.all_end_rel_micros
    total = sum(micros.values())
    rows = [{"op": op, "ms_per_token": value / 1e3 / args.steps, "share": value / total}
            for op, value in micros.most_common(args.top)]
    print(f"{model_path}, batch {args.batch}: decode {decode_tok_s:.1f} tokens/s; "
          f"op time {total / 1e3 / args.steps:.1f} ms per token")
    for row in rows:
        print(f"  {row['op']:32s} {row['ms_per_token']:7.2f} ms/token  {row['share']:6.1%}")
    write_json(args, model_path, decode_tok_s, total / 1e3 / args.steps, rows)


def write_json(args, model_path, decode_tok_s, op_ms_per_token, rows):
    if args.json_out:
        with open(args.json_out, "w") as file:
            json.dump({"command": " ".join([os.path.relpath(sys.executable), *sys.argv]), "cpu": cpu(),
                       "model_path": model_path, "jit_compile": args.jit_compile, "batch": args.batch,
                       "steps": args.steps, "decode_tok_s": decode_tok_s, "op_ms_per_token": op_ms_per_token,
                       "results": rows}, file, indent=2)


if __name__ == "__main__":
    main()
