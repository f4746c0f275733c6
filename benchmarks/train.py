"""Training speed on the real Gemma 3 270M: gemma3-tf's Trainer against keras-hub 0.32's `fit`, same data.

    .venv/bin/python benchmarks/train.py [--impl ours keras_hub] [--batch 4] [--sequence_length 128]
        [--lora_rank 8] [--steps 6] [--no-jit_compile] [--remat] [--json_out FILE]

Both read the same TFRecords (random token ids, loss on the second half of each row) through
`gemma3_tf.data.load_tfrecord_dataset`, start from the same weights (keras-hub loads a preset
written from the GGUF), use AdamW at the same learning rate and XLA. One subprocess per
implementation, so each peak RSS (VmHWM) is its own. tokens/s = batch x sequence length x steps
/ seconds, over `--steps` steps after two warm-up steps (which include compilation). The loss
columns differ by convention: ours is the mean over trained tokens, Keras `fit` divides by all
positions (half of them are trained here).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WARMUP_STEPS = 2


def _peak_rss_gib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024**2


def write_json(path, results, **settings):
    """`--json_out`: the rows printed above, the command that measured them and its settings."""
    python = os.path.relpath(sys.executable)
    command = shlex.join([sys.executable if python.startswith("..") else python, *sys.argv])
    with open(path, "w") as file:
        json.dump({"command": command, **settings, "results": results}, file, indent=1)


def write_data(directory, preset_dir, batch, sequence_length, steps):
    """Random examples for (warm-up + measured) steps, as the preprocessing pipeline would write them."""
    import numpy as np
    import tensorflow as tf

    import gemma3_tf
    from gemma3_tf import data

    tokenizer = gemma3_tf.Gemma3Tokenizer.from_preset(preset_dir)
    rng = np.random.default_rng(0)
    count = batch * (WARMUP_STEPS + steps)
    with tf.io.TFRecordWriter(os.path.join(directory, "train-00000-of-00001.tfrecord")) as writer:
        for index in range(count):
            token_ids = rng.integers(10, 20000, sequence_length)
            token_ids[0] = 2
            loss_mask = (np.arange(sequence_length) >= sequence_length // 2).astype(int)
            features = {"token_ids": token_ids, "padding_mask": np.ones(sequence_length, int), "loss_mask": loss_mask,
                        "vision_mask": np.zeros(sequence_length, int), "vision_indices": []}
            writer.write(data.serialize_example(features, [], str(index)))
    schema = data.Schema(sequence_length=sequence_length, image_size=896, max_images_per_prompt=0,
                         num_vision_tokens_per_image=256, tokenizer_fingerprint=data.tokenizer_fingerprint(tokenizer),
                         counts={"written": count})
    with open(os.path.join(directory, data.SCHEMA_FILE), "w") as file:
        file.write(schema.to_json())
    return os.path.join(directory, "train-*.tfrecord")


def measure_ours(preset_dir, pattern, args, output_dir):
    from gemma3_tf.training import TrainConfig, Trainer, load_model, resolve_strategy

    strategy = resolve_strategy("default")
    causal_lm = load_model(preset_dir, strategy, lora_rank=args.lora_rank, remat=args.remat)
    config = TrainConfig(steps=WARMUP_STEPS + args.steps, global_batch_size=args.batch, learning_rate=1e-4,
                         log_every=WARMUP_STEPS, checkpoint_every=10**9, jit_compile=args.jit_compile, shuffle_buffer=1)
    trainer = Trainer(causal_lm, strategy, config, output_dir)
    trainer.fit(pattern, progress=False)
    measured = trainer.history[1:]  # after the warm-up chunk
    steps = trainer.history[-1][0] - trainer.history[0][0]
    return steps, sum(entry[2] for entry in measured), trainer.history[-1][1]


def measure_keras_hub(preset_dir, pattern, args):
    import keras
    import keras_hub

    from gemma3_tf import data

    causal_lm = keras_hub.models.Gemma3CausalLM.from_preset(preset_dir, preprocessor=None)
    if args.lora_rank:
        causal_lm.backbone.enable_lora(args.lora_rank)
    causal_lm.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.01),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), weighted_metrics=[],
                      jit_compile=args.jit_compile)
    dataset = data.load_tfrecord_dataset(pattern, args.batch, shuffle=False, repeat=True, with_images=False)
    causal_lm.fit(dataset, steps_per_epoch=WARMUP_STEPS, epochs=1, verbose=0)
    start = time.perf_counter()
    history = causal_lm.fit(dataset.skip(WARMUP_STEPS), steps_per_epoch=args.steps, epochs=1, verbose=0)
    return args.steps, time.perf_counter() - start, history.history["loss"][-1]


def child(impl, preset_dir, pattern, args):
    with tempfile.TemporaryDirectory() as output_dir:
        if impl == "ours":
            steps, seconds, loss = measure_ours(preset_dir, pattern, args, output_dir)
        else:
            steps, seconds, loss = measure_keras_hub(preset_dir, pattern, args)
    tokens = steps * args.batch * args.sequence_length
    print(json.dumps({"impl": impl, "tokens_per_s": round(tokens / seconds, 1), "step_s": round(seconds / steps, 3),
                      "loss": round(float(loss), 3), "peak_rss_gib": round(_peak_rss_gib(), 2)}))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", nargs="+", default=["ours", "keras_hub"], choices=["ours", "keras_hub"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--sequence_length", type=int, default=128)
    parser.add_argument("--lora_rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--jit_compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--remat", action="store_true", help="ours only: recompute decoder blocks")
    parser.add_argument("--json_out", default=None, help="also write the rows as JSON")
    parser.add_argument("--child", nargs=3, metavar=("IMPL", "PRESET", "PATTERN"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main():
    args = parse_args()
    if args.child:
        return child(*args.child, args)
    import gemma3_tf

    flags = [f"--batch={args.batch}", f"--sequence_length={args.sequence_length}", f"--lora_rank={args.lora_rank}",
             f"--steps={args.steps}", "--jit_compile" if args.jit_compile else "--no-jit_compile"]
    flags += ["--remat"] if args.remat else []
    with tempfile.TemporaryDirectory() as preset_dir, tempfile.TemporaryDirectory() as data_dir:
        gemma3_tf.Gemma3CausalLM.from_preset("gemma3_270m_q4_k_m", progress=False).save_to_preset(preset_dir)
        pattern = write_data(data_dir, preset_dir, args.batch, args.sequence_length, args.steps)
        rows = []
        for impl in args.impl:
            result = subprocess.run([sys.executable, __file__, "--child", impl, preset_dir, pattern, *flags],
                                    capture_output=True, text=True)
            if result.returncode:
                sys.exit(f"{impl} failed:\n{result.stderr[-3000:]}")
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(f"Real Gemma 3 270M, float32, LoRA rank {args.lora_rank}, batch {args.batch} x {args.sequence_length} "
          f"tokens, XLA {'on' if args.jit_compile else 'off'}, remat {'on' if args.remat else 'off'}, "
          f"{args.steps} measured steps")
    print("| impl | tokens/s | s/step | loss | peak RSS GiB |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['impl']} | {row['tokens_per_s']} | {row['step_s']} | {row['loss']} | {row['peak_rss_gib']} |")
    if args.json_out:
        write_json(args.json_out, rows, batch=args.batch, sequence_length=args.sequence_length,
                   lora_rank=args.lora_rank, steps=args.steps, warmup_steps=WARMUP_STEPS,
                   jit_compile=args.jit_compile, remat=args.remat, dtype="float32")


if __name__ == "__main__":
    main()
