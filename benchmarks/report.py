"""Writes benchmarks/REPORT.md and its charts from the JSON files of the benchmark scripts (`--json_out`).

    .venv/bin/python benchmarks/report.py [--results benchmarks/results] [--out benchmarks/REPORT.md]
        [--charts benchmarks/charts]

Reads RESULTS/NAME.json for each script that benchmarks/run_all.py runs (and RESULTS/run_all.json,
the record of that run: exit statuses, durations, logs). A script without its JSON gets a line
saying it did not run (or failed) and the command that runs it. The report opens with a description
of this machine and a headline table (gemma3-tf against its peers), then one section per script:
its table, with the columns the script prints, and the exact command. Charts: PNGs (matplotlib,
Agg backend) in CHARTS, linked from the report; a chart without data is not drawn (an old one is
removed).
"""

import argparse
import ast
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from batch_inference import length_bucketing_summary  # noqa: E402
from served_speed import table as served_speed_rows  # noqa: E402
from run_all import NAMES, command, export_command  # noqa: E402

BENCHMARK_DIR = os.path.dirname(os.path.abspath(__file__))
IMPL_NAMES = {"ours": "gemma3-tf", "keras_hub": "keras-hub 0.32", "hf": "HF transformers", "llama_cpp": "llama.cpp"}
CHARTS = {
    "generate": "generate_tokens_per_s.png",
    "serving": "serving_latency.png",
    "batch_inference": "batch_inference_throughput.png",
    "train": "train_tokens_per_s.png",
}


# ---------------------------------------------------------------------------------------------- machine


def _read(path):
    try:
        with open(path) as file:
            return file.read()
    except OSError:
        return ""


def machine():
    """(label, value) pairs describing this machine."""
    cpuinfo = _read("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    cores = {tuple(block.get(key) for key in ("physical id", "core id"))
             for block in ({line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
                            for line in chunk.splitlines() if ":" in line} for chunk in cpuinfo.split("\n\n"))
             if "core id" in block}
    logical = os.cpu_count()
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    cpu_count = f"{logical} logical CPUs" + (f", {len(cores)} physical cores" if cores else "")
    if available != logical:
        cpu_count += f", {available} available to this process"
    memory = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                   if line.startswith("MemTotal:")), None)
    os_release = dict(line.split("=", 1) for line in _read("/etc/os-release").splitlines() if "=" in line)
    system = os_release.get("PRETTY_NAME", "").strip('"') or platform.system()
    gpus = "none found (nvidia-smi absent)"
    if shutil.which("nvidia-smi"):
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        gpus = "; ".join(listing.stdout.split("\n")).strip("; ") or "none found"

    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return [
        ("CPU", models[0] if models else platform.processor() or platform.machine()),
        ("Cores", cpu_count),
        ("RAM", f"{memory / 1024**2:.1f} GiB" if memory else "unknown"),
        ("GPUs", gpus),
        ("OS", f"{system}, kernel {platform.release()} ({platform.machine()})"),
        ("Python", f"{platform.python_version()} ({platform.python_implementation()})"),
        ("Packages", ", ".join(f"{package} {version(package)}" for package in
                               ("tensorflow", "keras", "keras-hub", "numpy", "apache-beam", "gemma3-tf"))),
        ("Report written", datetime.datetime.now().astimezone().isoformat(timespec="seconds")),
    ]


# ---------------------------------------------------------------------------------------------- tables


def fmt(form):
    """A cell formatter: a format spec applied to numbers; strings (such as "n/a") and None pass through."""
    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return format(value, form)
        return str(value)
    return cell


def table(rows, columns, rule="---|"):
    """Markdown table; `columns` is a list of (key, title, formatter)."""
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |", "|" + rule * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(key)) for key, _, cell in columns) + " |" for row in rows]
    return "\n".join(lines)


def _plain(keys):
    return [(key, key, str) for key in keys]


def forward_table(data):
    return table(data["results"], [
        ("implementation", "implementation", str), ("tokens", "tokens", str),
        ("backbone_s", "backbone s", fmt(".3f")), ("causal_lm_s", "causal LM s", fmt(".3f"))])


def keras_hub_parity_table(data):
    return table(data["results"], [("case", "case", str), ("hidden_states", "hidden states", fmt(".1e")),
                                   ("logits", "logits", fmt(".1e"))])


def real_270m_vs_hf_table(data):
    return table(data["results"], [
        ("format", "format", str), ("load_s", "load s", fmt(".1f")),
        ("max_abs_diff_top10", "max abs diff vs HF, top-10 logits", fmt(".1e")),
        ("top10_ids_equal", "top-10 ids equal", str), ("argmax_equal", "per-position argmax equal", str)])


def weight_options_table(data):
    return table(data["results"], [
        ("weights", "weights", str), ("decode_tok_s", "decode tokens/s (batch 1)", fmt(".1f")),
        ("top1_agreement", "top-1 agreement vs float32", fmt(".2%")),
        ("max_logprob_error", "max log-prob error", fmt(".3f"))])


def generate_table(data):
    rows = data["results"]
    if not rows:
        return "(no rows: every implementation was skipped)"
    return table(rows, _plain(list(rows[0])))


def train_table(data):
    header = (f"Real Gemma 3 270M, float32, LoRA rank {data.get('lora_rank')}, batch {data.get('batch')} x "
              f"{data.get('sequence_length')} tokens, XLA {'on' if data.get('jit_compile') else 'off'}, "
              f"remat {'on' if data.get('remat') else 'off'}, {data.get('steps')} measured steps\n\n")
    return header + table(data["results"], [("impl", "impl", str), ("tokens_per_s", "tokens/s", str),
                                            ("step_s", "s/step", str), ("loss", "loss", str),
                                            ("peak_rss_gib", "peak RSS GiB", str)])


def serving_table(data):
    columns = ["variant", "row", "p50_s", "p99_s", "overhead_p50", "tokens_per_s", "requests_per_s"]
    return table(data["results"], [(key, key, fmt("+.1%") if key == "overhead_p50" else fmt(".3f"))
                                   for key in columns])


def batch_inference_table(data):
    results = data["results"]
    text = (f"{data.get('num_prompts')} prompts, {data.get('max_new_tokens')} new tokens max (greedy), "
            f"{data.get('model_path')}\n\n")
    text += table(results, [
        ("batch_size", "batch", str), ("loop_prompts_per_s", "loop prompts/s", fmt(".2f")),
        ("pipeline_prompts_per_s", "pipeline prompts/s", fmt(".2f")), ("overhead", "overhead", fmt("+.1%")),
        ("loop_s", "loop s", fmt(".2f")), ("pipeline_s", "pipeline s", fmt(".2f")),
        ("pipeline_inference_s", "in model calls s", fmt(".2f")), ("model_load_s", "load s", fmt(".2f")),
        ("matching_completions", "same completions", str)], rule="---:|")
    if results:
        best = max(results, key=lambda result: result["pipeline_prompts_per_s"])
        text += (f"\n\nBest batch size {best['batch_size']}: {best['pipeline_prompts_per_s']:.2f} prompts/s through "
                 f"Beam, overhead {best['overhead']:+.1%} over the plain loop (target <= +15%).")
    if data.get("length_bucketing"):
        text += "\n" + length_bucketing_summary(data["length_bucketing"])
    return text


def hostile_input_table(data):
    return table(data["results"], [
        ("request", "request", str), ("protocol", "protocol", str), ("answer", "answer", str),
        ("p50_s", "p50 s", fmt(".3f")), ("rss_before_mib", "server RSS before MiB", fmt(".0f")),
        ("rss_after_mib", "after MiB", fmt(".0f"))])


def served_profile_table(data):
    text = (f"{data.get('cpu')}. Decode {data.get('decode_tok_s', 0):.1f} tokens/s; op time "
            f"{data.get('op_ms_per_token', 0):.1f} ms per token (2 threads, so above wall time).\n\n")
    return text + table(data["results"], [("op", "op type", str), ("ms_per_token", "ms per token", fmt(".2f")),
                                          ("share", "share of op time", fmt(".1%"))], rule="---:|")


def projection_layouts_table(data):
    text = f"{data.get('cpu')}; {data.get('dtype')}, XLA {'on' if data.get('jit_compile') else 'off'}.\n\n"
    return text + table(data["results"], [("rows", "rows", str), ("form", "form", str), ("ms", "ms", fmt(".1f"))])


def served_memory_table(data):
    text = f"{data.get('cpu')}.\n\n"
    loaded_by = lambda row: (row["model_path"], row.get("loader", "python"))  # noqa: E731
    for path, loader in dict.fromkeys(map(loaded_by, data["results"])):
        rows = [row for row in data["results"] if loaded_by(row) == (path, loader)]
        text += (f"`{path}`, {loader} loader: {rows[0]['function_nodes']} nodes in the graph's functions, "
                 f"saved_model.pb {rows[0]['saved_model_pb_mib']:.1f} MiB, variables "
                 f"{rows[0]['variables_gib']:.2f} GiB.\n\n")
        text += table(rows, [("stage", "stage", str), ("rss_gib", "RSS GiB", fmt(".2f")),
                             ("anonymous_gib", "anonymous GiB", fmt(".2f")), ("peak_gib", "peak GiB", fmt(".2f"))])
        text += "\n\n"
    return text.rstrip()


def served_speed_table(data):
    return f"{data.get('cpu')}.\n\n" + served_speed_rows(data["results"])


TABLES = {name: globals()[f"{name}_table"] for name in NAMES}


# ---------------------------------------------------------------------------------------------- headline


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def headline(results):
    """Rows (metric, gemma3-tf, peers, source) of the table at the top."""
    rows = []
    generate = results.get("generate")
    if generate:
        by_key = {(row["impl"], row["batch"], row["prompt"]): _number(row.get("decode_tok_s_total"))
                  for row in generate["results"]}
        for batch in (1, 8):
            for prompt in sorted({key[2] for key in by_key if key[1] == batch}):
                ours = by_key.get(("ours", batch, prompt))
                peers = []
                for impl in ("keras_hub", "hf", "llama_cpp"):
                    if (impl, batch, prompt) not in by_key:
                        continue
                    value = by_key[(impl, batch, prompt)]
                    if value is None:  # generate.py's llama.cpp runner decodes one sequence at a time
                        peers.append(f"{IMPL_NAMES[impl]}: n/a" + (" (batch 1 only)" if batch > 1 else ""))
                    else:
                        ratio = f" (ours {ours / value:.2f}x)" if ours else ""
                        peers.append(f"{IMPL_NAMES[impl]}: {value:g}{ratio}")
                skipped = generate.get("skipped", {})
                peers += [f"{IMPL_NAMES[impl]}: not installed" for impl in skipped]
                rows.append((f"Decode tokens/s, batch {batch} (all rows), prompt {prompt}",
                             "-" if ours is None else f"{ours:g}", "; ".join(peers) or "-", "generate.py"))
    else:
        rows.append(("Decode tokens/s, batch 1 and 8", "not run", "-", "generate.py"))
    train = results.get("train")
    if train:
        by_impl = {row["impl"]: row["tokens_per_s"] for row in train["results"]}
        ours, theirs = by_impl.get("ours"), by_impl.get("keras_hub")
        peer = "-" if theirs is None else f"keras-hub 0.32 `fit`: {theirs:g}" + (
            f" (ours {ours / theirs:.2f}x)" if ours else "")
        rows.append((f"Training tokens/s (LoRA rank {train.get('lora_rank')}, batch {train.get('batch')} x "
                     f"{train.get('sequence_length')})", "-" if ours is None else f"{ours:g}", peer, "train.py"))
    else:
        rows.append(("Training tokens/s", "not run", "-", "train.py"))
    serving = results.get("serving")
    if serving:
        for variant in dict.fromkeys(row["variant"] for row in serving["results"]):
            variant_rows = {row["row"]: row for row in serving["results"] if row["variant"] == variant}
            overheads = [f"{name.upper() if name == 'rest' else 'gRPC'} {variant_rows[name]['overhead_p50']:+.1%}"
                         for name in ("rest", "grpc") if name in variant_rows]
            direct = variant_rows.get("direct")
            rows.append((f"Serving p50 overhead over a direct SavedModel call ({variant}, "
                         f"{serving.get('max_new_tokens')} new tokens)", ", ".join(overheads) or "-",
                         f"direct call p50 {direct['p50_s']:.3f} s" if direct else "-", "serving.py"))
    else:
        rows.append(("Serving p50 overhead over a direct call", "not run", "-", "serving.py"))
    batch = results.get("batch_inference")
    if batch and batch["results"]:
        best = max(batch["results"], key=lambda result: result["pipeline_prompts_per_s"])
        rows.append((f"Batch inference: Beam pipeline overhead over a plain loop (best batch size "
                     f"{best['batch_size']})", f"{best['overhead']:+.1%}",
                     f"pipeline {best['pipeline_prompts_per_s']:.2f} prompts/s, loop "
                     f"{best['loop_prompts_per_s']:.2f}", "batch_inference.py"))
    else:
        rows.append(("Batch inference: Beam overhead over a plain loop", "not run", "-", "batch_inference.py"))
    return rows


# ---------------------------------------------------------------------------------------------- charts


def grouped_bars(path, title, ylabel, groups, series, value_format="{:g}"):
    """Bars of each series (name -> one value per group, None for none) side by side within each group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(series)
    width = 0.8 / max(count, 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 + 0.45 * len(groups) * max(count, 1)), 4.2))
    for index, (name, values) in enumerate(series.items()):
        positions = [group + (index - (count - 1) / 2) * width for group in range(len(groups))]
        heights = [value if value is not None else 0 for value in values]
        bars = axes.bar(positions, heights, width, label=name)
        axes.bar_label(bars, labels=[value_format.format(value) if value is not None else "n/a" for value in values],
                       fontsize=7, padding=2)
    axes.set_xticks(range(len(groups)), groups, fontsize=8)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.margins(y=0.15)
    if count > 1:
        axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def draw_charts(results, charts_dir):
    """Draws the charts that have data; returns {benchmark name: chart path}."""
    drawn = {}
    os.makedirs(charts_dir, exist_ok=True)
    generate = results.get("generate")
    if generate and generate["results"]:
        rows = generate["results"]
        groups = list(dict.fromkeys((row["batch"], row["prompt"]) for row in rows))
        impls = list(dict.fromkeys(row["impl"] for row in rows))
        values = {(row["impl"], row["batch"], row["prompt"]): _number(row.get("decode_tok_s_total")) for row in rows}
        path = os.path.join(charts_dir, CHARTS["generate"])
        grouped_bars(path, "Decode tokens/s (all rows of the batch), real Gemma 3 270M, greedy", "tokens/s",
                     [f"batch {batch}\nprompt {prompt}" for batch, prompt in groups],
                     {IMPL_NAMES.get(impl, impl): [values.get((impl, *group)) for group in groups] for impl in impls})
        drawn["generate"] = path
    serving = results.get("serving")
    if serving and serving["results"]:
        rows = serving["results"]
        path = os.path.join(charts_dir, CHARTS["serving"])
        grouped_bars(path, f"Serving latency per request ({serving.get('max_new_tokens')} new tokens)", "seconds",
                     [f"{row['variant']}\n{row['row']}" for row in rows],
                     {"p50": [row["p50_s"] for row in rows], "p99": [row["p99_s"] for row in rows]}, "{:.2f}")
        drawn["serving"] = path
    batch = results.get("batch_inference")
    if batch and batch["results"]:
        rows = batch["results"]
        path = os.path.join(charts_dir, CHARTS["batch_inference"])
        grouped_bars(path, f"Batch inference, {batch.get('num_prompts')} prompts: Beam pipeline vs plain loop",
                     "prompts/s", [f"batch {row['batch_size']}" for row in rows],
                     {"loop": [row["loop_prompts_per_s"] for row in rows],
                      "pipeline": [row["pipeline_prompts_per_s"] for row in rows]}, "{:.2f}")
        drawn["batch_inference"] = path
    train = results.get("train")
    if train and train["results"]:
        rows = train["results"]
        path = os.path.join(charts_dir, CHARTS["train"])
        grouped_bars(path, f"Training tokens/s, LoRA rank {train.get('lora_rank')}, batch {train.get('batch')} x "
                     f"{train.get('sequence_length')}", "tokens/s", [IMPL_NAMES.get(row["impl"], row["impl"])
                                                                     for row in rows],
                     {"tokens/s": [row["tokens_per_s"] for row in rows]})
        drawn["train"] = path
    for name, file_name in CHARTS.items():  # no stale charts from an earlier run
        stale = os.path.join(charts_dir, file_name)
        if name not in drawn and os.path.exists(stale):
            os.remove(stale)
    return drawn


# ---------------------------------------------------------------------------------------------- report


def description(name):
    """The first paragraph of the script's docstring, read without importing it."""
    with open(os.path.join(BENCHMARK_DIR, f"{name}.py")) as file:
        docstring = ast.get_docstring(ast.parse(file.read())) or ""
    return " ".join(docstring.split("\n\n")[0].split())


def load(results_dir):
    results, problems = {}, {}
    for name in NAMES:
        path = os.path.join(results_dir, f"{name}.json")
        if not os.path.exists(path):
            continue
        try:
            with open(path) as file:
                data = json.load(file)
            if not isinstance(data.get("results"), list):
                raise ValueError("no list of rows under \"results\"")
            results[name] = data
        except (OSError, ValueError) as error:
            problems[name] = f"{path} could not be read: {error}"
    return results, problems


def settings_line(data):
    settings = {key: value for key, value in data.items() if key not in ("command", "results", "skipped")}
    return ", ".join(f"{key} = {json.dumps(value)}" for key, value in settings.items())


def missing_line(name, results_dir, runs, problems):
    rerun = "`" + " ".join(command(name, results_dir)) + "`"
    if name == "batch_inference":
        rerun = "`" + " ".join(export_command()) + "` (once), then " + rerun
    if name in problems:
        return f"**{name}.py**: {problems[name]}. Run: {rerun}"
    record = runs.get(name)
    if record and "error" in record:
        return (f"**{name}.py failed** ({record['error']}, after {record.get('seconds', 0):.0f} s; log: "
                f"`{record.get('log')}`). Run: {rerun}")
    return f"**{name}.py did not run** (no {os.path.join(results_dir, name + '.json')}). Run: {rerun}"


def write_report(results_dir, out, charts_dir):
    results, problems = load(results_dir)
    runs, run_info = {}, {}
    status_path = os.path.join(results_dir, "run_all.json")
    if os.path.exists(status_path):
        with open(status_path) as file:
            run_info = json.load(file)
        runs = run_info.get("runs", {})
    drawn = draw_charts(results, charts_dir)
    out_dir = os.path.dirname(os.path.abspath(out))

    def link(name):
        relative = os.path.relpath(os.path.abspath(drawn[name]), out_dir)
        return f"![{name}]({relative.replace(os.sep, '/')})"

    lines = ["# Benchmarks", "",
             "Written by `benchmarks/report.py` from the JSON of the latest run of each script in `benchmarks/` "
             "(`make bench`, that is `benchmarks/run_all.py`; `--only NAME` reruns one). Each section gives "
             "the exact command and when it ran.", ""]
    lines += ["## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in machine()]
    started = sorted(record["started"] for record in runs.values() if "started" in record)
    if started:
        lines.append(f"| Benchmarks run | {started[0]} to {run_info.get('finished', '(unfinished)')} |")
    lines += ["", "## Headline", "", "| metric | gemma3-tf | peers / reference | source |", "|---|---|---|---|"]
    lines += [f"| {metric} | {ours} | {peers} | `benchmarks/{source}` |" for metric, ours, peers, source
              in headline(results)]
    missing = [name for name in NAMES if name not in results]
    if missing:
        def why(name):
            return ("unreadable JSON" if name in problems else
                    "failed" if "error" in runs.get(name, {}) else "did not run")

        lines += ["", "Not in this report: " + ", ".join(f"{name}.py ({why(name)})" for name in missing)
                  + "; each one's section below gives the command that runs it."]
    for name in NAMES:
        lines += ["", f"## {name}.py", "", description(name), ""]
        if name not in results:
            lines.append(missing_line(name, results_dir, runs, problems))
            continue
        data = results[name]
        record = runs.get(name, {})
        when = ", ".join(part for part in (record.get("started"), f"{record['seconds']:.0f} s"
                                           if "seconds" in record and "error" not in record else None) if part)
        lines += [f"Command: `{data.get('command', ' '.join(command(name, results_dir)))}`"
                  + (f" ({when})" if when else ""), ""]
        # Tables with a header of their own.
        if settings_line(data) and name not in ("train", "batch_inference", "served_profile",
                                                "projection_layouts", "served_memory", "served_speed"):
            lines += [f"Settings: {settings_line(data)}", ""]
        if name == "generate" and data.get("skipped"):
            lines += ["Skipped (see the docstring of `benchmarks/generate.py` for their virtualenvs): "
                      + "; ".join(f"{impl}: {reason}" for impl, reason in data["skipped"].items()), ""]
        lines.append(TABLES[name](data))
        if name in drawn:
            lines += ["", link(name)]
    os.makedirs(out_dir, exist_ok=True)
    with open(out, "w") as file:
        file.write("\n".join(lines) + "\n")
    return results, missing


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--out", default=os.path.join("benchmarks", "REPORT.md"))
    parser.add_argument("--charts", default=os.path.join("benchmarks", "charts"))
    args = parser.parse_args()
    results, missing = write_report(args.results, args.out, args.charts)
    print(f"wrote {args.out}: {len(results)} of {len(NAMES)} benchmarks"
          + (f"; missing: {', '.join(missing)}" if missing else ""))


if __name__ == "__main__":
    main()
