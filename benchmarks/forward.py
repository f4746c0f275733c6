"""Forward-pass latency of the 270M architecture: gemma3-tf vs keras-hub 0.32, XLA, float32, batch 1.

    .venv/bin/python benchmarks/forward.py [--lengths 128 512] [--repeats 10] [--json_out FILE]

Random weights (latency does not depend on their values). Prints median
seconds per forward pass of the backbone and of the causal LM (backbone +
262144-way logits), after one warm-up call that traces and compiles.
"""

import argparse
import json
import os
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import statistics
import time

import keras_hub
import numpy as np
import tensorflow as tf

import gemma3_tf
from gemma3_tf.presets import PRESETS


def median_seconds(function, inputs, repeats):
    function(inputs)  # trace + compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.asarray(function(inputs))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_json(path, results, **settings):
    """`--json_out`: the rows printed above, the command that measured them and its settings."""
    python = os.path.relpath(sys.executable)
    command = shlex.join([sys.executable if python.startswith("..") else python, *sys.argv])
    with open(path, "w") as file:
        json.dump({"command": command, **settings, "results": results}, file, indent=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json_out", default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    config = dict(PRESETS["gemma3_270m"]["backbone"])
    models = {
        "gemma3-tf": gemma3_tf.Gemma3Backbone(**config),
        "keras-hub 0.32": keras_hub.models.Gemma3Backbone(**config),
    }
    heads = {
        "gemma3-tf": gemma3_tf.Gemma3CausalLM(models["gemma3-tf"]),
        "keras-hub 0.32": keras_hub.models.Gemma3CausalLM(backbone=models["keras-hub 0.32"], preprocessor=None),
    }
    rows = []
    print("| implementation | tokens | backbone s | causal LM s |")
    print("|---|---|---|---|")
    for length in args.lengths:
        inputs = {
            "token_ids": tf.ones((1, length), "int32"),
            "padding_mask": tf.ones((1, length), "int32"),
        }
        for name in models:
            backbone_s = median_seconds(tf.function(models[name], jit_compile=True), inputs, args.repeats)
            lm_s = median_seconds(tf.function(heads[name], jit_compile=True), inputs, args.repeats)
            print(f"| {name} | {length} | {backbone_s:.3f} | {lm_s:.3f} |", flush=True)
            rows.append({"implementation": name, "tokens": length, "backbone_s": backbone_s, "causal_lm_s": lm_s})
    if args.json_out:
        write_json(args.json_out, rows, lengths=args.lengths, repeats=args.repeats, batch=1, dtype="float32")


if __name__ == "__main__":
    main()
