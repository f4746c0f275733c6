"""Faster weights for the real Gemma 3 270M: bfloat16 and int8 (`gemma3_tf.quantization`: Keras' int8, with int8
inputs for the logits and feedforward gates, weight-only for the other matmuls: `gemma3-tf export --quantize int8`)
against float32.

    .venv/bin/python benchmarks/weight_options.py [--json_out FILE]

For each option: decode tokens/s at batch 1 (the slope between 8 and 40 new greedy tokens) and
accuracy against float32 over 256 greedy steps: float32 generates 256 tokens after each prompt,
then every option scores that same sequence (teacher forcing) as its `--jit_compile` export computes
it (the export's serving kernels, under XLA); top-1 agreement is the share of positions where its
argmax equals float32's, and the logit error is the max |difference| of the log-softmax at float32's
chosen tokens.
"""

import argparse
import json
import os
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import gemma3_tf  # noqa: E402
from gemma3_tf.layers.projections import backbone_serving_kernels  # noqa: E402
from gemma3_tf.quantization import compiled_by_xla, quantize_weights  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]
STEPS = 256


def load(option):
    dtype = "bfloat16" if option == "bfloat16" else None
    causal_lm = gemma3_tf.Gemma3CausalLM.from_preset("gemma3_270m_q4_k_m", dtype=dtype, progress=False)
    if option == "int8":
        quantize_weights(causal_lm.backbone, "int8")
    return causal_lm


def decode_rate(causal_lm):
    ids = np.array([[2, 818, 5279, 529, 7001, 563]], "int32")

    def timed(n):
        start = time.perf_counter()
        causal_lm.generate_ids(ids, np.ones_like(ids), n, stop_token_ids=())
        return time.perf_counter() - start

    timed(8), timed(40)
    return 32 / (min(timed(40) for _ in range(2)) - min(timed(8) for _ in range(2)))


def log_probs(causal_lm, sequence):
    logits = causal_lm({"token_ids": sequence, "padding_mask": np.ones_like(sequence)})
    return np.asarray(tf.nn.log_softmax(tf.cast(logits, tf.float32)))[0]


def greedy_sequences(reference, prompts, steps):
    """[(prompt + `steps` greedy tokens of `reference` [1, L], prompt length)] for each prompt, generated as one
    batch, and `reference`'s log-probabilities over each sequence."""
    features = reference.preprocessor.generate_preprocess(prompts, sequence_length=16)
    token_ids, padding_mask = np.asarray(features["token_ids"]), np.asarray(features["padding_mask"])
    new = np.asarray(reference.generate_ids(token_ids, padding_mask, steps, stop_token_ids=()))
    sequences, scores = [], []
    for row, length in enumerate(padding_mask.sum(axis=1)):
        sequences.append((np.concatenate([token_ids[row:row + 1, :length], new[row:row + 1]], axis=1), int(length)))
        scores.append(log_probs(reference, sequences[-1][0]))
    return sequences, scores


def served_log_probs(causal_lm, sequences):
    """`log_probs` of each of `sequences` as a `--jit_compile` export of `causal_lm` computes them: its serving
    kernels (int8 and 16-bit float weights as the export stores them), the matmuls XLA runs (`compiled_by_xla`).
    The sequences go in as one right-padded batch, so one compile."""
    length = max(sequence.shape[1] for sequence, _ in sequences)
    token_ids = np.stack([np.pad(sequence[0], (0, length - sequence.shape[1])) for sequence, _ in sequences])
    padding_mask = np.stack([np.arange(length) < sequence.shape[1] for sequence, _ in sequences]).astype("int32")

    def forward(token_ids, padding_mask):
        with compiled_by_xla():
            return causal_lm({"token_ids": token_ids, "padding_mask": padding_mask})
    with backbone_serving_kernels(causal_lm.backbone):
        logits = tf.function(forward, jit_compile=True)(token_ids, padding_mask)
    scores = np.asarray(tf.nn.log_softmax(tf.cast(logits, tf.float32)))
    return [row[:sequence.shape[1]] for row, (sequence, _) in zip(scores, sequences)]


def agreement(causal_lm, sequences, reference_scores):
    """(top-1 agreement, max log-prob error) of `causal_lm`, as served (`served_log_probs`), against the reference
    over the greedy tokens of `greedy_sequences`, teacher forced."""
    agree, total, error = 0, 0, 0.0
    for (sequence, length), expected, scores in zip(sequences, reference_scores,
                                                    served_log_probs(causal_lm, sequences)):
        span = slice(length - 1, sequence.shape[1] - 1)
        agree += int((scores[span].argmax(-1) == expected[span].argmax(-1)).sum())
        total += sequence.shape[1] - length
        chosen = sequence[0, length:]
        error = max(error, float(np.abs(scores[span][np.arange(len(chosen)), chosen]
                                        - expected[span][np.arange(len(chosen)), chosen]).max()))
    return agree / total, error


def write_json(path, results, **settings):
    """`--json_out`: the rows printed above, the command that measured them and its settings."""
    python = os.path.relpath(sys.executable)
    command = shlex.join([sys.executable if python.startswith("..") else python, *sys.argv])
    with open(path, "w") as file:
        json.dump({"command": command, **settings, "results": results}, file, indent=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json_out", default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    reference = load("float32")
    sequences, reference_scores = greedy_sequences(reference, PROMPTS, STEPS)
    rows = [("float32", decode_rate(reference), 1.0, 0.0)]
    del reference
    for option in ("bfloat16", "int8"):
        causal_lm = load(option)
        rows.append((option, decode_rate(causal_lm), *agreement(causal_lm, sequences, reference_scores)))
        print(f"done: {option}", file=sys.stderr)
    print("| weights | decode tokens/s (batch 1) | top-1 agreement vs float32 | max log-prob error |")
    print("|---|---|---|---|")
    for option, rate, top1, error in rows:
        print(f"| {option} | {rate:.1f} | {top1:.2%} | {error:.3f} |")
    if args.json_out:
        write_json(args.json_out, [{"weights": option, "decode_tok_s": rate, "top1_agreement": top1,
                                    "max_logprob_error": error} for option, rate, top1, error in rows],
                   prompts=PROMPTS, steps=STEPS, batch=1)


if __name__ == "__main__":
    main()
