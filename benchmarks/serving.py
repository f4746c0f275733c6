"""Serving latency and throughput of the exported real Gemma 3 270M: a direct in-process call of the
SavedModel against the same requests through the local TF Serving-compatible server (REST and gRPC).

    .venv/bin/python benchmarks/serving.py [--variants plain xla] [--requests 20] [--max_new_tokens 16]
        [--clients 16 --requests_per_client 20] [--json_out FILE]

Each variant is exported once into `--work_dir` (`gemma3-tf export`, `--jit_compile` for xla) and
reused on later runs. The server runs as its own process (`python -m serving.server`, batching on),
with the export's `batching_parameters.txt` (TF Serving's allowed_batch_sizes, which the export's
warmup records cover), as it would in production; the clients run here. Rows:
- direct: the `serving_default` signature run in this process through TensorFlow's session loader, as
  the server runs it, one request at a time.
- rest / grpc: the same requests one at a time through the server; overhead = p50 / direct p50 - 1.
  The three rows take turns (direct, rest, grpc, direct, ...), so that drift in the machine's speed
  during the run, which is larger than the overhead measured, falls on all three alike.
- rest x N clients: N threads each sending `--requests_per_client` requests; requests/s and tokens/s
  over the whole run, and the latency percentiles each client saw.
Every request asks for exactly `--max_new_tokens` greedy tokens (a stop token may end one sooner;
tokens/s counts what was generated).
"""

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROMPTS = ["The capital of France is", "Write a haiku about the sea.", "def fibonacci(n):",
           "Three facts about owls:", "Once upon a time", "The best way to learn a language is"]


def export(work_dir, variant, preset):
    base = os.path.join(work_dir, f"gemma3_{variant}")
    if not any(name.isdigit() for name in (os.listdir(base) if os.path.isdir(base) else [])):
        command = [sys.executable, "-m", "gemma3_tf.cli", "export", "--preset", preset, "--model_base_path", base,
                   "--max_length", "512"] + (["--jit_compile"] if variant == "xla" else [])
        subprocess.run(command, check=True)
    return base


def free_port():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def percentiles(latencies):
    return {"p50_s": float(np.percentile(latencies, 50)), "p99_s": float(np.percentile(latencies, 99))}


def interleaved(calls, count):
    """{name: (latencies, tokens)} of `count` rounds, each round one call of every entry of `calls` in
    turn (after one untimed round), so that the machine's drift over the run affects each row alike."""
    for call in calls.values():
        call(0)
    latencies, tokens = {name: [] for name in calls}, dict.fromkeys(calls, 0)
    for index in range(count):
        for name, call in calls.items():
            start = time.perf_counter()
            tokens[name] += call(index)
            latencies[name].append(time.perf_counter() - start)
    return {name: (latencies[name], tokens[name]) for name in calls}


def direct_call(base, args):
    """A function sending request `index` to the `serving_default` signature of the SavedModel, loaded
    in this process as the server (and TF Serving) loads it; it returns the number of tokens generated."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (TF Text kernels)

    from gemma3_tf.export import run_signature

    version = max(int(name) for name in os.listdir(base) if name.isdigit())
    session = tf.compat.v1.Session(graph=tf.Graph())
    meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], os.path.join(base, str(version)))
    signature = meta_graph.signature_def["serving_default"]

    def call(index):
        result = run_signature(session, signature, {"prompt": [PROMPTS[index % len(PROMPTS)]],
                                                    "max_new_tokens": [args.max_new_tokens]})
        return int(result["num_tokens"][0])

    return call


def start_server(base, name):
    grpc_port, rest_port = free_port(), free_port()
    batching = os.path.join(os.path.dirname(base), "batching_parameters.txt")
    server = subprocess.Popen([sys.executable, "-m", "serving.server", f"--model_name={name}",
                               f"--model_base_path={base}", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
                               "--enable_batching", f"--batching_parameters_file={batching}",
                               "--rest_api_timeout_in_ms=0"])
    from serving.client import RestClient

    client = RestClient(f"http://localhost:{rest_port}", name, retries=120, backoff=0.5, timeout=600)
    status = client.status()["model_version_status"][0]  # retried until the server answers: loaded, warmed up
    if status["state"] != "AVAILABLE":
        server.terminate()
        raise SystemExit(f"the server could not load {base}: {status}")
    return server, grpc_port, rest_port


def variant_rows(base, args):
    """The direct, rest and grpc rows (interleaved), then the concurrent row."""
    from serving.client import GrpcClient, RestClient

    name = os.path.basename(base)
    server, grpc_port, rest_port = start_server(base, name)
    try:
        calls = {"direct": direct_call(base, args)}
        for row, client in (("rest", RestClient(f"http://localhost:{rest_port}", name, timeout=600)),
                            ("grpc", GrpcClient(f"localhost:{grpc_port}", name, timeout=600))):
            def call(index, client=client):
                return client.generate(PROMPTS[index % len(PROMPTS)], max_new_tokens=args.max_new_tokens)["num_tokens"]

            calls[row] = call
        rows = []
        for row, (latencies, tokens) in interleaved(calls, args.requests).items():
            rows.append({"row": row, **percentiles(latencies), "tokens_per_s": tokens / sum(latencies)})
            if row != "direct":
                rows[-1]["overhead_p50"] = rows[-1]["p50_s"] / rows[0]["p50_s"] - 1
        rows.append(concurrent_row(rest_port, name, args))
    finally:
        server.terminate()
        server.wait(60)
    return rows


def concurrent_row(rest_port, name, args):
    from serving.client import RestClient

    def session(number):
        client = RestClient(f"http://localhost:{rest_port}", name, timeout=600)
        latencies, tokens = [], 0
        for index in range(args.requests_per_client):
            start = time.perf_counter()
            tokens += client.generate(PROMPTS[(number + index) % len(PROMPTS)],
                                      max_new_tokens=args.max_new_tokens)["num_tokens"]
            latencies.append(time.perf_counter() - start)
        return latencies, tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        sessions = list(pool.map(session, range(args.clients)))
    seconds = time.perf_counter() - start
    latencies = [latency for session_latencies, _ in sessions for latency in session_latencies]
    tokens = sum(session_tokens for _, session_tokens in sessions)
    return {"row": f"rest x {args.clients} clients", **percentiles(latencies), "tokens_per_s": tokens / seconds,
            "requests_per_s": len(latencies) / seconds, "requests": len(latencies)}


def _command():
    """This run's command line, for the JSON of `--json_out`."""
    python = os.path.relpath(sys.executable)
    return shlex.join([sys.executable if python.startswith("..") else python, *sys.argv])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gemma3_270m_q4_k_m")
    parser.add_argument("--work_dir", default="/tmp/gemma3_tf_serving_bench")
    parser.add_argument("--variants", nargs="+", default=["plain", "xla"], choices=["plain", "xla"])
    parser.add_argument("--requests", type=int, default=20, help="sequential requests per row")
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests_per_client", type=int, default=20)
    parser.add_argument("--json_out", default=None)
    args = parser.parse_args()

    results = []
    for variant in args.variants:
        base = export(args.work_dir, variant, args.preset)
        rows = variant_rows(base, args)
        results += [{"variant": variant, **row} for row in rows]
        print(f"done: {variant}", file=sys.stderr)
    columns = ["variant", "row", "p50_s", "p99_s", "overhead_p50", "tokens_per_s", "requests_per_s"]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for result in results:
        cells = [result.get(c) for c in columns]
        print("| " + " | ".join("-" if c is None else f"{c:+.1%}" if k == "overhead_p50" else
                                f"{c:.3f}" if isinstance(c, float) else str(c) for k, c in zip(columns, cells)) + " |")
    if args.json_out:
        with open(args.json_out, "w") as file:
            json.dump({"command": _command(), "max_new_tokens": args.max_new_tokens, "variants": args.variants,
                       "requests": args.requests, "clients": args.clients,
                       "requests_per_client": args.requests_per_client, "results": results}, file, indent=1)


if __name__ == "__main__":
    main()
