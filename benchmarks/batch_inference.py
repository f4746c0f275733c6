"""Batch inference throughput: the Beam pipeline (pipelines/batch_inference.py) against a plain loop over the
same SavedModel, and Beam's overhead.

    gemma3-tf export --model_base_path /tmp/bench_models/gemma3            # the real 270M, once
    .venv/bin/python benchmarks/batch_inference.py --model_path /tmp/bench_models/gemma3/1 \\
        [--num_prompts 64] [--max_new_tokens 16] [--batch_sizes 1 4 16] [--mixed_prompts 48] [--json_out FILE]

For each batch size B, on the same `--num_prompts` prompts (greedy, exactly the same requests):
- loop: `tf.saved_model.load` (not timed; a fresh load for each B, so that each pays the first
  call's cost as the pipeline does), then `loaded.generate` on consecutive chunks of B prompts.
- pipeline: `pipelines.batch_inference` on the DirectRunner in this process (one worker), reading a
  JSONL file of the prompts and writing its outputs, batches of exactly B (min = max = B). Its time
  is the job's wall time minus the model load time that RunInference reports, so both rows time the
  same work: the model calls, plus, for the pipeline, Beam's start, read, batching and writes.
Columns: prompts/s of each, overhead = pipeline time / loop time - 1, the time the pipeline spent
inside the model calls (RunInference's batch latencies) and how many completions equal the loop's.
The summary line gives the overhead at the best batch size (the one with the most pipeline prompts/s).

Then length bucketing (issue 21): `--mixed_prompts` prompts of mixed lengths (from 20 to 4000 bytes, spread
evenly in log length, shuffled), through the pipeline at the largest batch size with `--no-bucket_by_length`
(batches as rows come) and with the default length buckets: prompts/s of each, the speed-up, and how many
completions are the same in both.
"""

import argparse
import json
import os
import shlex
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROMPTS = ["The capital of France is", "Write a haiku about the sea.", "def fibonacci(n):",
           "Three facts about owls:", "Once upon a time", "The best way to learn a language is",
           "Translate to French: good morning", "A list of prime numbers: 2, 3, 5,"]


def loop_row(model_path, prompts, batch_size, max_new_tokens):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    loaded = tf.saved_model.load(model_path)
    completions, start = [], time.perf_counter()
    for begin in range(0, len(prompts), batch_size):
        result = loaded.generate(prompt=tf.constant(prompts[begin: begin + batch_size]),
                                 max_new_tokens=tf.constant(max_new_tokens))
        completions += [text.decode("utf-8", errors="replace") for text in result["completion"].numpy()]
    seconds = time.perf_counter() - start
    return {"loop_s": seconds, "loop_prompts_per_s": len(prompts) / seconds}, completions


def mixed_length_prompts(count, shortest=20, longest=4000, seed=0):
    """`count` prompts whose byte lengths spread evenly in log scale over [shortest, longest], shuffled."""
    import numpy as np

    text = " ".join(PROMPTS) + " "
    lengths = np.geomspace(shortest, longest, count).astype(int)
    np.random.default_rng(seed).shuffle(lengths)
    return [(text * (length // len(text) + 1))[:length].strip() for length in lengths]


def pipeline_row(model_path, prompts, batch_size, max_new_tokens, work_dir, bucket_by_length=True):
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines import batch_inference

    rows_path = os.path.join(work_dir, "prompts.jsonl")
    with open(rows_path, "w") as file:
        file.writelines(json.dumps({"id": f"p{index:05d}", "prompt": prompt}) + "\n"
                        for index, prompt in enumerate(prompts))
    output_dir = os.path.join(work_dir, f"out_b{batch_size}_{'by_length' if bucket_by_length else 'as_they_come'}")
    args, beam_args = batch_inference.build_parser().parse_known_args([
        "--model_path", model_path, "--input", rows_path, "--output_dir", output_dir,
        "--max_new_tokens", str(max_new_tokens), "--min_batch_size", str(batch_size),
        "--max_batch_size", str(batch_size)] + ([] if bucket_by_length else ["--no-bucket_by_length"]))
    start = time.perf_counter()
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args, save_main_session=False))
    batch_inference.build_pipeline(pipeline, args)
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.perf_counter() - start
    metrics = {}
    for distribution in result.metrics().query(MetricsFilter().with_namespace("RunInference"))["distributions"]:
        value = distribution.committed or distribution.attempted
        metrics[distribution.key.metric.name] = metrics.get(distribution.key.metric.name, 0) + value.sum
    load_s = metrics.get("load_model_latency_milli_secs", 0) / 1e3
    inference_s = metrics.get("inference_batch_latency_micro_secs", 0) / 1e6
    predictions, errors = {}, 0
    for name in sorted(os.listdir(output_dir)):
        with open(os.path.join(output_dir, name), encoding="utf-8") as file:
            records = [json.loads(line) for line in file]
        if name.startswith("predictions-"):
            predictions.update({record["id"]: record["completion"] for record in records})
        else:
            errors += len(records)
    seconds = wall - load_s
    row = {"pipeline_wall_s": wall, "model_load_s": load_s, "pipeline_s": seconds,
           "pipeline_prompts_per_s": len(prompts) / seconds, "pipeline_inference_s": inference_s, "errors": errors}
    return row, [predictions.get(f"p{index:05d}") for index in range(len(prompts))]


def _command():
    """This run's command line, for the JSON of `--json_out`."""
    python = os.path.relpath(sys.executable)
    return shlex.join([sys.executable if python.startswith("..") else python, *sys.argv])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help="a SavedModel version directory of gemma3-tf export")
    parser.add_argument("--num_prompts", type=int, default=64)
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--mixed_prompts", type=int, default=48, help="0: no length-bucketing rows")
    parser.add_argument("--json_out", default=None)
    args = parser.parse_args()

    prompts = [PROMPTS[index % len(PROMPTS)] for index in range(args.num_prompts)]
    results = []
    with tempfile.TemporaryDirectory() as work_dir:
        for batch_size in args.batch_sizes:
            loop, expected = loop_row(args.model_path, prompts, batch_size, args.max_new_tokens)
            piped, got = pipeline_row(args.model_path, prompts, batch_size, args.max_new_tokens, work_dir)
            results.append({"batch_size": batch_size, **loop, **piped,
                            "overhead": piped["pipeline_s"] / loop["loop_s"] - 1,
                            "matching_completions": sum(a == b for a, b in zip(expected, got))})
            print(f"done: batch {batch_size}", file=sys.stderr)
        bucketing = None
        if args.mixed_prompts:
            mixed, batch_size = mixed_length_prompts(args.mixed_prompts), max(args.batch_sizes)
            runs = {bucketed: pipeline_row(args.model_path, mixed, batch_size, args.max_new_tokens, work_dir,
                                           bucket_by_length=bucketed) for bucketed in (False, True)}
            bucketing = {"num_prompts": len(mixed), "batch_size": batch_size,
                         "prompt_bytes": [min(map(len, mixed)), max(map(len, mixed))],
                         "as_they_come_prompts_per_s": runs[False][0]["pipeline_prompts_per_s"],
                         "by_length_prompts_per_s": runs[True][0]["pipeline_prompts_per_s"],
                         "matching_completions": sum(a == b for a, b in zip(runs[False][1], runs[True][1]))}
            bucketing["speedup"] = bucketing["by_length_prompts_per_s"] / bucketing["as_they_come_prompts_per_s"]
            print("done: length bucketing", file=sys.stderr)
    columns = [("batch_size", "batch", "{}"), ("loop_prompts_per_s", "loop prompts/s", "{:.2f}"),
               ("pipeline_prompts_per_s", "pipeline prompts/s", "{:.2f}"), ("overhead", "overhead", "{:+.1%}"),
               ("loop_s", "loop s", "{:.2f}"), ("pipeline_s", "pipeline s", "{:.2f}"),
               ("pipeline_inference_s", "in model calls s", "{:.2f}"), ("model_load_s", "load s", "{:.2f}"),
               ("matching_completions", "same completions", "{}")]
    print(f"\n{args.num_prompts} prompts, {args.max_new_tokens} new tokens max (greedy), {args.model_path}\n")
    print("| " + " | ".join(title for _, title, _ in columns) + " |\n|" + "---:|" * len(columns))
    for result in results:
        print("| " + " | ".join(form.format(result[key]) for key, _, form in columns) + " |")
    best = max(results, key=lambda result: result["pipeline_prompts_per_s"])
    print(f"\nBest batch size {best['batch_size']}: {best['pipeline_prompts_per_s']:.2f} prompts/s through Beam, "
          f"overhead {best['overhead']:+.1%} over the plain loop (target <= +15%).")
    if bucketing:
        print(length_bucketing_summary(bucketing))
    if args.json_out:
        with open(args.json_out, "w") as file:
            json.dump({"command": _command(), "model_path": args.model_path, "num_prompts": args.num_prompts,
                       "max_new_tokens": args.max_new_tokens, "best_batch_size": best["batch_size"],
                       "results": results, "length_bucketing": bucketing}, file, indent=1)


def length_bucketing_summary(bucketing):
    return (f"\nMixed lengths ({bucketing['num_prompts']} prompts of {bucketing['prompt_bytes'][0]}-"
            f"{bucketing['prompt_bytes'][1]} bytes, batches of {bucketing['batch_size']}): "
            f"{bucketing['as_they_come_prompts_per_s']:.2f} prompts/s as rows come, "
            f"{bucketing['by_length_prompts_per_s']:.2f} by length: {bucketing['speedup']:.2f}x (target 1.5x); "
            f"{bucketing['matching_completions']} of {bucketing['num_prompts']} completions the same.")


if __name__ == "__main__":
    main()
