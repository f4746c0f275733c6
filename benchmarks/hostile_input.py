"""What a refusal costs the server holding the real Gemma 3 270M export: latency and server memory (RSS) of
requests over each limit, repeated, against a request that is answered.

    .venv/bin/python benchmarks/hostile_input.py [--repeats 10] [--json_out FILE]

Exports the model once into `--work_dir` (plain, `--max_length 2048`: the export's default limits), runs
`python -m serving.server` on it with batching on as deployed, and sends each request `--repeats` times
over REST and gRPC from this process. Rows: the request, its answer, p50 latency, the server's RSS before
the first and after the last.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.host import cpu, status_gib  # noqa: E402
from benchmarks.serving import start_server  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gemma3_270m_q4_k_m")
    parser.add_argument("--work_dir", default="/tmp/gemma3_tf_hostile_bench")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json_out", default=None)
    args = parser.parse_args()
    base = os.path.join(args.work_dir, "gemma3")
    if not os.path.isdir(os.path.join(base, "1")):
        subprocess.run([sys.executable, "-m", "gemma3_tf.cli", "export", "--preset", args.preset,
                        "--model_base_path", base], check=True)
    from serving.client import GrpcClient, RestClient, ServingError

    server, grpc_port, rest_port = start_server(base, "gemma3")
    clients = {"rest": RestClient(f"http://localhost:{rest_port}", "gemma3", timeout=600, retries=0),
               "grpc": GrpcClient(f"localhost:{grpc_port}", "gemma3", timeout=600, retries=0)}
    cases = [
        ("answered: 1 short prompt, 8 new tokens", ["The capital of France is"]),
        ("200k-character prompt", ["word " * 40_000]),
        ("5M-character prompt", ["x" * 5_000_000]),
        ("1000 prompts", ["hi"] * 1000),
        ("prompt of 2100 tokens", ["hi " * 2100]),
    ]
    rows = []
    try:
        clients["rest"].generate("warm", max_new_tokens=8)
        for name, prompts in cases:
            for protocol, client in clients.items():
                before, latencies, answer = status_gib("VmRSS", server.pid) * 1024, [], ""
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    try:
                        client.generate(prompts, max_new_tokens=8)
                        answer = "200"
                    except ServingError as error:
                        answer = f"{error.status}: {error.message[:90]}"
                    latencies.append(time.perf_counter() - start)
                row = {"request": name, "protocol": protocol, "answer": str(answer),
                       "p50_s": float(np.median(latencies)), "rss_before_mib": before,
                       "rss_after_mib": status_gib("VmRSS", server.pid) * 1024}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        server.terminate()
        server.wait()
    print(f"\nCPU: {cpu()}; {args.repeats} of each request\n")
    print("| request | protocol | answer | p50 s | server RSS before -> after (MiB) |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['request']} | {row['protocol']} | {row['answer']} | {row['p50_s']:.3f} | "
              f"{row['rss_before_mib']:.0f} -> {row['rss_after_mib']:.0f} |")
    if args.json_out:
        with open(args.json_out, "w") as file:
            json.dump({"cpu": cpu(), "repeats": args.repeats, "results": rows}, file, indent=1)


if __name__ == "__main__":
    main()
