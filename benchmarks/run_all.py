"""`make bench`: every script in benchmarks/ once, at its default (full) size, then REPORT.md and its charts.

    .venv/bin/python benchmarks/run_all.py [--only generate train ...] [--no-report]

Each script runs as `.venv/bin/python benchmarks/NAME.py ... --json_out benchmarks/results/NAME.json`
(its old JSON is removed first, so the report shows this run only); its stdout and stderr are shown
and kept in benchmarks/results/logs/NAME.log. A script that fails is recorded, with its exit status,
in benchmarks/results/run_all.json, and the next one runs. Then benchmarks/report.py writes
benchmarks/REPORT.md and benchmarks/charts/*.png from the JSON files present.

serving.py exports the real 270M into benchmarks/results/models/gemma3_{plain,xla} (reused on later
runs); batch_inference.py and hostile_input.py read benchmarks/results/models/gemma3/1, exported first
with `gemma3-tf export` when absent. generate.py skips HF transformers and llama.cpp unless their
virtualenvs exist (see its docstring).
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join("benchmarks", "results")
MODELS = os.path.join(RESULTS, "models")
BATCH_MODEL = os.path.join(MODELS, "gemma3")
# (name, extra arguments), in the order they run: the defaults of each script, only paths added.
BENCHMARKS = [
    ("forward", []),
    ("keras_hub_parity", []),
    ("real_270m_vs_hf", []),
    ("weight_options", []),
    ("generate", []),
    ("train", []),
    ("serving", ["--work_dir", MODELS]),
    ("batch_inference", ["--model_path", os.path.join(BATCH_MODEL, "1")]),
    ("hostile_input", ["--work_dir", MODELS]),  # reuses the export batch_inference.py reads
    ("served_profile", ["--work_dir", MODELS]),  # reuses serving.py's plain export
    ("projection_layouts", []),
    # serving.py's plain export, whose max_length is 512: a score request near it (the default 2000 was refused).
    ("served_memory", ["--model_path", os.path.join(MODELS, "gemma3_plain", "1"), "--score_tokens", "500",
                       "--loader", "python", "c_api"]),
    ("served_speed", ["--work_dir", MODELS]),  # issue 21's ratios: every export option, served
]
NAMES = [name for name, _ in BENCHMARKS]


def command(name, results=RESULTS, python=os.path.join(".venv", "bin", "python")):
    """The command line that runs benchmark `name` as `make bench` does."""
    extra = dict(BENCHMARKS)[name]
    return [python, os.path.join("benchmarks", f"{name}.py"), *extra,
            "--json_out", os.path.join(results, f"{name}.json")]


def export_command(python=os.path.join(".venv", "bin", "python")):
    """The export that batch_inference.py reads (the real 270M, default settings)."""
    return [os.path.join(os.path.dirname(python), "gemma3-tf"), "export", "--model_base_path", BATCH_MODEL,
            "--version", "1"]


def run_logged(argv, log_path, mode="w"):
    """Runs `argv`, echoing its output and appending it to `log_path`; returns the exit status."""
    with open(log_path, mode) as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
        return process.wait()


def run(name, logs):
    """Runs one benchmark; returns its record for run_all.json."""
    json_out = os.path.join(RESULTS, f"{name}.json")
    if os.path.exists(json_out):
        os.remove(json_out)
    log_path = os.path.join(logs, f"{name}.log")
    argv = command(name, python=sys.executable)
    start = time.perf_counter()
    record = {"command": " ".join(command(name)), "log": log_path,
              "started": datetime.datetime.now().isoformat(timespec="seconds")}
    with open(log_path, "w"):
        pass
    if name == "batch_inference" and not os.path.exists(os.path.join(BATCH_MODEL, "1", "saved_model.pb")):
        print(f"== export for batch_inference: {' '.join(export_command())}", flush=True)
        status = run_logged(export_command(sys.executable), log_path, "a")
        if status:
            record.update(returncode=status, seconds=round(time.perf_counter() - start, 1),
                          error=f"{' '.join(export_command())} failed with exit status {status}")
            return record
    status = run_logged(argv, log_path, "a")
    record.update(returncode=status, seconds=round(time.perf_counter() - start, 1))
    if status:
        record["error"] = f"exit status {status}"
    elif not os.path.exists(json_out):
        record["error"] = f"exited 0 but wrote no {json_out}"
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=NAMES, help="run these benchmarks only (others keep their JSON)")
    parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                        help="write benchmarks/REPORT.md and benchmarks/charts/ afterwards")
    args = parser.parse_args()
    os.chdir(ROOT)
    logs = os.path.join(RESULTS, "logs")
    os.makedirs(logs, exist_ok=True)
    status_path = os.path.join(RESULTS, "run_all.json")
    status = {"started": datetime.datetime.now().isoformat(timespec="seconds"), "runs": {}}
    if args.only and os.path.exists(status_path):
        with open(status_path) as file:
            status["runs"] = json.load(file).get("runs", {})
    for name in args.only or NAMES:
        print(f"== {name}: {' '.join(command(name))}", flush=True)
        record = run(name, logs)
        status["runs"][name] = record
        print(f"== {name}: {record.get('error', 'ok')} after {record['seconds']:.0f} s", flush=True)
        with open(status_path, "w") as file:  # after each script, so that an interrupted run keeps its record
            json.dump(status, file, indent=1)
    status["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    with open(status_path, "w") as file:
        json.dump(status, file, indent=1)
    failed = [name for name, record in status["runs"].items() if "error" in record]
    if failed:
        print(f"== failed: {', '.join(failed)} (see {logs}/)", flush=True)
    if args.report:
        subprocess.run([sys.executable, os.path.join("benchmarks", "report.py"), "--results", RESULTS,
                        "--out", os.path.join("benchmarks", "REPORT.md"),
                        "--charts", os.path.join("benchmarks", "charts")], check=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
