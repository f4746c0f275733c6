"""Generation speed on the real Gemma 3 270M (float32, greedy): gemma3-tf and keras-hub 0.32, same weights.

    .venv/bin/python benchmarks/generate.py [--impl ours keras_hub] [--batch 1 8] [--prompt 16 512]

One subprocess per (implementation, batch, prompt length), so each peak RSS is its own. keras-hub
loads a keras-hub preset written from the same GGUF weights (in a temporary directory). Columns:
compile time (first call minus a warm call), time to first token (a call generating one token),
decode tokens/s (the slope between 8 and 40 new tokens, so prefill and call overhead cancel),
prefill tokens/s, and peak RSS.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _peak_rss_kib():
    """This process's peak RSS. Not `getrusage`: Linux keeps ru_maxrss across exec, so a child
    would report the peak of the parent it was forked from."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def _generator(impl, preset_dir):
    """A function (token_ids, padding_mask of the full length, new tokens) -> None for `impl`."""
    if impl == "ours":
        import gemma3_tf

        causal_lm = gemma3_tf.Gemma3CausalLM.from_preset("gemma3_270m_q4_k_m", progress=False)
        return lambda ids, mask, n: causal_lm.generate_ids(ids, mask, n, stop_token_ids=())
    import keras_hub
    import numpy as np

    causal_lm = keras_hub.models.Gemma3CausalLM.from_preset(preset_dir)
    causal_lm.compile(sampler="greedy")
    causal_lm.preprocessor = None  # token inputs; keras-hub then needs an empty `images`

    def generate(ids, mask, n):
        batch, length = ids.shape
        padded = np.pad(ids, [(0, 0), (0, n)])
        padded_mask = np.pad(mask, [(0, 0), (0, n)])
        causal_lm.generate({"token_ids": padded, "padding_mask": padded_mask,
                            "images": np.zeros((batch, 0, 896, 896, 3), "float32")}, stop_token_ids=None)

    return generate


def measure(impl, batch, prompt_length, preset_dir):
    import numpy as np

    generate = _generator(impl, preset_dir)
    rng = np.random.default_rng(0)
    token_ids = rng.integers(10, 20000, (batch, prompt_length)).astype("int32")
    token_ids[:, 0] = 2
    mask = np.ones_like(token_ids)

    def timed(new_tokens):
        start = time.perf_counter()
        generate(token_ids, mask, new_tokens)
        return time.perf_counter() - start

    first_call = timed(1)  # compiles (ours: the 16-token bucket; keras-hub: this max_length)
    for n in (8, 40):  # compile the other shapes
        timed(n)
    first_token = min(timed(1) for _ in range(2))
    short, long = min(timed(8) for _ in range(2)), min(timed(40) for _ in range(2))
    step = (long - short) / 32
    return {
        "impl": impl, "batch": batch, "prompt": prompt_length,
        "compile_s": round(first_call - first_token, 1),
        "ttft_s": round(first_token, 3),
        "prefill_tok_s": round(batch * prompt_length / max(first_token - step, 1e-9)),
        "decode_tok_s_per_row": round(1 / step, 1),
        "decode_tok_s_total": round(batch / step, 1),
        "peak_rss_gib": round(_peak_rss_kib() / 1024**2, 2),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", nargs="+", default=["ours", "keras_hub"], choices=["ours", "keras_hub"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt", type=int, nargs="+", default=[16, 512])
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        impl, batch, prompt, preset_dir = args.one
        print(json.dumps(measure(impl, int(batch), int(prompt), preset_dir)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as preset_dir:
        if "keras_hub" in args.impl:
            import gemma3_tf

            gemma3_tf.Gemma3CausalLM.from_preset("gemma3_270m_q4_k_m", progress=False).save_to_preset(preset_dir)
        for batch in args.batch:
            for prompt in args.prompt:
                for impl in args.impl:
                    out = subprocess.run([sys.executable, __file__, "--one", impl, str(batch), str(prompt), preset_dir],
                                         capture_output=True, text=True, check=True).stdout
                    rows.append(json.loads(out.strip().splitlines()[-1]))
                    print(f"done: {impl}, batch {batch}, prompt {prompt}", file=sys.stderr)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
