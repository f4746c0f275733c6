"""Generation speed of gemma3-tf on the real Gemma 3 270M (float32, greedy), one subprocess per shape.

    .venv/bin/python benchmarks/generate.py [--batch 1 8] [--prompt 16 512]

Per (batch, prompt length): compile time (first call), time to first token (a call that
generates one token: prefill + one step), decode tokens/s per row (the slope between 8 and 40
new tokens, so prefill and call overhead cancel), prefill tokens/s, and the subprocess's peak RSS.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def measure(batch, prompt_length):
    import numpy as np

    import gemma3_tf

    causal_lm = gemma3_tf.Gemma3CausalLM.from_preset("gemma3_270m_q4_k_m", progress=False)
    rng = np.random.default_rng(0)
    token_ids = rng.integers(10, 20000, (batch, prompt_length)).astype("int32")
    token_ids[:, 0] = 2
    mask = np.ones_like(token_ids)

    def timed(new_tokens):
        start = time.perf_counter()
        causal_lm.generate_ids(token_ids, mask, new_tokens, stop_token_ids=())
        return time.perf_counter() - start

    compile_seconds = {n: timed(n) for n in (1, 8, 40)}  # first call per shape compiles
    first_token = min(timed(1) for _ in range(2))
    short, long = min(timed(8) for _ in range(2)), min(timed(40) for _ in range(2))
    step = (long - short) / 32
    return {
        "batch": batch, "prompt": prompt_length,
        "compile_s": round(compile_seconds[40] - long, 1),
        "ttft_s": round(first_token, 3),
        "prefill_tok_s": round(batch * prompt_length / max(first_token - step, 1e-9)),
        "decode_tok_s_per_row": round(1 / step, 1),
        "decode_tok_s_total": round(batch / step, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt", type=int, nargs="+", default=[16, 512])
    parser.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one)))
        return
    rows = []
    for batch in args.batch:
        for prompt in args.prompt:
            out = subprocess.run([sys.executable, __file__, "--one", str(batch), str(prompt)],
                                 capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(f"done: batch {batch}, prompt {prompt}", file=sys.stderr)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
