"""Issue 21's ratios in one run: the decode speed of each export option as served (the local server: TF
Serving's REST API over TensorFlow's session loader), against our in-process XLA `generate` and keras-hub's,
at batch 1 and 8, with the server's memory.

    .venv/bin/python benchmarks/served_speed.py [--options float32 float32_xla bfloat16_xla int8_xla]
        [--batch 1 8] [--in_process ours keras_hub llama_cpp] [--work_dir DIR] [--json_out FILE]

Each option is exported into `--work_dir` (`gemma3-tf export` with its flags, OPTIONS) and reused by later runs
until the code under gemma3_tf/ changes. Each option's server runs as its own process with batching on, as in
production, all at once, and this process sends them requests of `--batch` greedy rows, round by round: decode
tokens/s per row = 64 / (time of a request for 72 new tokens - time for 8), the best of `--repeats` rounds, as
issue 21 measures it; every row must run all 72 (a row that stops sooner fails the run: the slope would be wrong).
Server memory: its RSS once loaded and warmed up, and its peak RSS (VmHWM) after answering every request. The
in-process rows come from benchmarks/generate.py in a subprocess (decode slope between 8 and 40 new tokens,
16-token prompt).
Ratios: each option's rate over the in-process `ours` and `keras_hub` rates of the same batch size, and
bfloat16's and int8's over the served float32 export of the same XLA setting.
"""

import argparse
import glob
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.host import cpu, status_gib  # noqa: E402
from benchmarks.serving import _command, start_server  # noqa: E402

# Export option -> `gemma3-tf export` flags.
OPTIONS = {
    "float32": [], "float32_xla": ["--jit_compile"],
    "bfloat16": ["--dtype", "bfloat16"], "bfloat16_xla": ["--dtype", "bfloat16", "--jit_compile"],
    "int8": ["--quantize", "int8"], "int8_xla": ["--quantize", "int8", "--jit_compile"],
}
# Prompts after which the base 270M writes at least 72 tokens greedily (checked on every request).
PROMPTS = ["The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):",
           "The history of the Roman Empire", "Three facts about owls:", "The best way to learn a language is",
           "A recipe for bread:", "In the year 2050,"]
SHORT, LONG = 8, 72


def export(work_dir, option, preset):
    """BASE of the option's export, made again where the code that wrote it or its flags changed."""
    base = os.path.join(work_dir, f"gemma3_{option}")
    made_by = hashlib.sha256(" ".join([preset, *OPTIONS[option]]).encode())
    for source in sorted(glob.glob(os.path.join(REPO, "gemma3_tf", "**", "*.py"), recursive=True)):
        with open(source, "rb") as file:
            made_by.update(file.read())
    stamp = os.path.join(base, "made_by.sha256")
    if not os.path.exists(stamp) or pathlib.Path(stamp).read_text() != made_by.hexdigest():
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "gemma3_tf.cli", "export", "--preset", preset, "--model_base_path",
                        base, "--version", "1", *OPTIONS[option]], check=True)
        pathlib.Path(stamp).write_text(made_by.hexdigest())
    return base


def served_rows(bases, batches, repeats):
    """{option: ({batch: decode tokens/s per row}, server RSS after warmup GiB, its peak GiB)}.

    Every option's server is up at once and the requests go round by round (each round: every option, every
    batch), so that a slow stretch of a shared host falls on every option alike rather than on the one whose turn
    it was (runs minutes apart on a 2-core cloud host differed by up to a third).
    """
    from serving.client import RestClient

    servers = {}
    try:
        for option, base in bases.items():
            server, _, rest_port = start_server(base, os.path.basename(base))
            client = RestClient(f"http://localhost:{rest_port}", os.path.basename(base), timeout=1200)
            servers[option] = server, client, status_gib("VmRSS", server.pid)

        def seconds(client, batch, new_tokens):
            prompts = [PROMPTS[index % len(PROMPTS)] for index in range(batch)]
            start = time.perf_counter()
            counts = [row["num_tokens"] for row in client.generate(prompts, max_new_tokens=new_tokens)]
            elapsed = time.perf_counter() - start
            if counts != [new_tokens] * batch:
                raise SystemExit(f"a prompt stopped before {new_tokens} tokens ({counts}): pick another")
            return elapsed

        for _, client, _ in servers.values():
            for batch in batches:
                seconds(client, batch, SHORT), seconds(client, batch, LONG)  # the first call of each shape
        best = {}
        for _ in range(repeats):
            for option, (_, client, _) in servers.items():
                for batch in batches:
                    for tokens in (SHORT, LONG):
                        best[option, batch, tokens] = min(best.get((option, batch, tokens), float("inf")),
                                                          seconds(client, batch, tokens))
        return {option: ({batch: (LONG - SHORT) / (best[option, batch, LONG] - best[option, batch, SHORT])
                          for batch in batches}, loaded_gib, status_gib("VmHWM", server.pid))
                for option, (server, _, loaded_gib) in servers.items()}
    finally:
        for server, _, _ in servers.values():
            server.terminate()
            server.wait(60)


def in_process_rows(impls, batches):
    """{(impl, batch): decode tokens/s per row} from benchmarks/generate.py."""
    with tempfile.TemporaryDirectory() as work_dir:
        path = os.path.join(work_dir, "generate.json")
        subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "generate.py"),
                        "--impl", *impls, "--batch", *map(str, batches), "--prompt", "16", "--json_out", path],
                       check=True)
        with open(path) as file:
            results = json.load(file)["results"]
    return {(row["impl"], row["batch"]): row["decode_tok_s_per_row"] for row in results
            if isinstance(row.get("decode_tok_s_per_row"), (int, float))}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gemma3_270m_q4_k_m")
    parser.add_argument("--work_dir", default="/tmp/gemma3_tf_served_speed")
    parser.add_argument("--options", nargs="+", default=["float32", "float32_xla", "bfloat16_xla", "int8_xla"],
                        choices=list(OPTIONS))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--in_process", nargs="*", default=["ours", "keras_hub", "llama_cpp"],
                        choices=["ours", "keras_hub", "llama_cpp"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json_out", default=None)
    args = parser.parse_args()
    if max(args.batch) > len(PROMPTS):
        parser.error(f"--batch: at most {len(PROMPTS)} (one prompt per row)")

    bases = {option: export(args.work_dir, option, args.preset) for option in args.options}
    results = []
    for option, (rates, loaded_gib, peak_gib) in served_rows(bases, args.batch, args.repeats).items():
        results += [{"what": f"served {option}", "batch": batch, "decode_tok_s_per_row": rate,
                     "server_rss_loaded_gib": loaded_gib, "server_peak_rss_gib": peak_gib}
                    for batch, rate in rates.items()]
        print(f"done: {option}: " + ", ".join(f"batch {batch} {rate:.1f} tokens/s" for batch, rate in rates.items())
              + f"; RSS {loaded_gib:.2f} / {peak_gib:.2f} GiB", file=sys.stderr)
    reference = in_process_rows(args.in_process, args.batch) if args.in_process else {}
    results += [{"what": f"in-process {impl}", "batch": batch, "decode_tok_s_per_row": rate}
                for (impl, batch), rate in sorted(reference.items(), key=lambda item: (item[0][1], item[0][0]))]
    served = {(row["what"], row["batch"]): row["decode_tok_s_per_row"] for row in results}
    for row in results:
        # bfloat16 and int8 against the float32 export of the same XLA setting (issue 21: 1.7x and 2.5x).
        float32 = "served float32_xla" if row["what"].endswith("_xla") else "served float32"
        if row["what"].startswith("served ") and row["what"] != float32 and (float32, row["batch"]) in served:
            row["vs_float32"] = row["decode_tok_s_per_row"] / served[float32, row["batch"]]
        for impl in ("ours", "keras_hub", "llama_cpp"):
            if (impl, row["batch"]) in reference:
                row[f"vs_{impl}"] = row["decode_tok_s_per_row"] / reference[impl, row["batch"]]

    # The server inherits XLA_FLAGS, as tensorflow_model_server does: a run with XLA flags says so.
    settings = f"{cpu()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '(unset)')}"
    print(f"\n{settings}\n")
    print(table(results))
    if args.json_out:
        with open(args.json_out, "w") as file:
            json.dump({"command": _command(), "cpu": settings, "prompts": PROMPTS[:max(args.batch)],
                       "results": results}, file, indent=1)


def table(results):
    """The markdown table of the rows (the report prints it too)."""
    columns = [("what", "what", "{}"), ("batch", "batch", "{}"), ("decode_tok_s_per_row", "decode tokens/s per row",
               "{:.1f}"), ("vs_ours", "vs in-process ours (target 0.95x)", "{:.2f}x"),
               ("vs_keras_hub", "vs keras-hub (target 1.4x)", "{:.2f}x"),
               ("vs_float32", "vs served float32 (bf16 1.7x, int8 2.5x)", "{:.2f}x"),
               ("vs_llama_cpp", "vs llama.cpp", "{:.2f}x"),
               ("server_rss_loaded_gib", "server RSS loaded GiB", "{:.2f}"),
               ("server_peak_rss_gib", "server peak RSS GiB", "{:.2f}")]
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in results:
        lines.append("| " + " | ".join("-" if row.get(key) is None else form.format(row[key])
                                       for key, _, form in columns) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
