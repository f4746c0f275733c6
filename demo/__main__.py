"""`make demo`: the main job on the built-in default model (Gemma 3 270M).

Today it builds the 270M architecture (random weights) and runs forward passes,
eager and XLA-compiled, printing a summary. Later stages (real weights,
generation, fine-tuning, export, serving, batch inference) join as they land.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time

import keras
import numpy as np
import tensorflow as tf

import gemma3_tf
from gemma3_tf.presets import PRESETS

PRESET = "gemma3_270m"
SEQUENCE_LENGTH = 128


def main():
    stages = ["build", "forward (eager)", "compile (XLA)", "forward (XLA)"]
    progress = keras.utils.Progbar(len(stages), stateful_metrics=["stage"], unit_name="stage")
    summary = []

    def stage(index, name, seconds, note):
        summary.append((name, seconds, note))
        progress.update(index + 1, values=[("stage", index + 1)])

    start = time.perf_counter()
    backbone = gemma3_tf.Gemma3Backbone(**PRESETS[PRESET]["backbone"])
    causal_lm = gemma3_tf.Gemma3CausalLM(backbone)
    stage(0, stages[0], time.perf_counter() - start, f"{PRESET}: {backbone.count_params():,} parameters")

    rng = np.random.default_rng(0)
    inputs = {
        "token_ids": rng.integers(3, backbone.vocabulary_size, (1, SEQUENCE_LENGTH)).astype("int32"),
        "padding_mask": np.ones((1, SEQUENCE_LENGTH), "int32"),
    }
    start = time.perf_counter()
    logits = causal_lm(inputs)
    stage(1, stages[1], time.perf_counter() - start, f"logits {tuple(logits.shape)}")

    compiled = tf.function(causal_lm.__call__, jit_compile=True)
    start = time.perf_counter()
    compiled_logits = compiled(inputs)
    stage(2, stages[2], time.perf_counter() - start, "first call: trace + XLA compile")

    start = time.perf_counter()
    compiled(inputs)
    difference = float(np.abs(np.asarray(compiled_logits) - np.asarray(logits)).max())
    stage(3, stages[3], time.perf_counter() - start, f"{SEQUENCE_LENGTH} tokens; max |XLA - eager| = {difference:.1e}")

    print(f"\n{'stage':<18} {'seconds':>8}  notes")
    for name, seconds, note in summary:
        print(f"{name:<18} {seconds:>8.2f}  {note}")
    print("\nRandom weights: real checkpoints, generation and the pipeline stages come in later releases.")


if __name__ == "__main__":
    main()
