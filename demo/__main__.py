"""`make demo`: the whole job on the real Gemma 3 270M (base), end to end on this machine.

data (drawn images + captions, an instruction set) -> Beam preprocessing to TFRecords -> a short
LoRA fine-tune -> SavedModel export -> the local TF Serving-compatible server -> REST and gRPC
queries -> Beam batch inference over a prompt file. Everything goes to `demo_output/` (or
$DEMO_OUTPUT); the server is stopped at the end, whatever happens.

DEMO_FAST=1 runs the same stages on a tiny random model with the real tokenizer (for tests).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import glob
import json
import shutil
import socket
import subprocess
import sys
import time

import keras

FAST = os.environ.get("DEMO_FAST") == "1"
OUTPUT = os.path.abspath(os.environ.get("DEMO_OUTPUT", "demo_output"))
QUERIES = ["What is the capital of Japan?", "What is 12 plus 30?"]
MAX_NEW_TOKENS = 8


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

    def summary(self):
        width = max([len("stage")] + [len(name) for name, _, _ in self.rows])
        lines = [f"{'stage':<{width}} {'seconds':>8}  notes"]
        lines += [f"{name:<{width}} {seconds:>8.1f}  {note}" for name, seconds, note in self.rows]
        lines.append(f"{'total':<{width}} {sum(row[1] for row in self.rows):>8.1f}")
        return "\n".join(lines)


def tiny_preset(directory):
    """A tiny random Gemma 3 with the real 270M's tokenizer, saved as a preset (DEMO_FAST)."""
    import gemma3_tf
    from gemma3_tf.checkpoints import PACKAGED_GGUF_PRESET

    tokenizer = gemma3_tf.Gemma3Tokenizer.from_preset(PACKAGED_GGUF_PRESET)
    backbone = gemma3_tf.Gemma3Backbone(
        vocabulary_size=tokenizer.vocabulary_size(), image_size=896, num_layers=2, num_query_heads=2,
        num_key_value_heads=1, hidden_dim=32, intermediate_dim=64, head_dim=16, use_post_ffw_norm=True,
        use_post_attention_norm=True, use_sliding_window_attention=True, sliding_window_size=64)
    preprocessor = gemma3_tf.Gemma3CausalLMPreprocessor(tokenizer, sequence_length=64)
    gemma3_tf.Gemma3CausalLM(backbone, preprocessor).save_to_preset(directory)
    return directory


def free_port():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def count_lines(pattern):
    return sum(1 for path in glob.glob(pattern) for _ in open(path))


def main():
    from demo.data import write_datasets

    shutil.rmtree(OUTPUT, ignore_errors=True)
    paths = {name: os.path.join(OUTPUT, name) for name in ("data", "tfrecords_captions", "tfrecords_instructions",
                                                           "train", "models", "batch_inference")}
    stages = Stages(["data", "preprocess image-text (Beam)", "preprocess instructions (Beam)",
                     "fine-tune (LoRA)", "in-process completions", "export SavedModel", "start server",
                     "query REST + gRPC", "batch inference (Beam)"])
    report = {"fast": FAST, "paths": paths}
    server = None
    try:
        def make_data():
            data = write_datasets(paths["data"], FAST)
            return data, ", ".join(f"{count} {name}" for name, count in data["counts"].items())

        data = stages.run(make_data)
        preset = (tiny_preset(os.path.join(OUTPUT, "tiny_preset")) if FAST else "gemma3_270m_q4_k_m")

        def preprocess(source, output, flags):
            from pipelines import preprocess as job

            counts = job.main(["--input", source, "--output_dir", output, "--preset", preset, "--num_shards", "2",
                               *flags])
            return counts, (f"{counts['read']} rows -> {counts['written']} examples, "
                            f"{sum(counts['rejected'].values())} rejected")

        report["captions"] = stages.run(lambda: preprocess(
            data["captions"], paths["tfrecords_captions"],
            ["--sequence_length", "320", "--max_images_per_prompt", "1", "--image_size", "224"]))
        report["instructions"] = stages.run(lambda: preprocess(
            data["instructions"], paths["tfrecords_instructions"], ["--sequence_length", "48",
                                                                    "--max_images_per_prompt", "0"]))

        def fine_tune():
            from gemma3_tf import training

            summary = training.train(
                preset, os.path.join(paths["tfrecords_instructions"], "train-*.tfrecord"), paths["train"],
                steps=6 if FAST else 24, global_batch_size=4, lora_rank=8, learning_rate=5e-2 if FAST else 1e-3,
                log_every=1, checkpoint_every=1000, warmup_steps=0)
            return summary, (f"loss {summary['first_loss']:.3f} -> {summary['loss']:.3f} in {summary['steps']} "
                             f"steps, {summary['tokens_per_second']} tokens/s")

        report["train"] = stages.run(fine_tune)
        final = report["train"]["final_preset"]

        def in_process():
            import gemma3_tf

            causal_lm = gemma3_tf.Gemma3CausalLM.from_preset(final, progress=False)
            prompts = [gemma3_tf.preprocessing.chat_prompt([{"role": "user", "content": q}]) for q in QUERIES]
            features = causal_lm.preprocessor.generate_preprocess(prompts)
            longest = int(features["padding_mask"].numpy().sum(-1).max())
            new_ids = causal_lm.generate_ids(features["token_ids"][:, :longest], features["padding_mask"][:, :longest],
                                             MAX_NEW_TOKENS)
            completions = causal_lm.preprocessor.generate_postprocess(new_ids)
            return (causal_lm, prompts, completions), f"{completions!r}"

        causal_lm, prompts, expected = stages.run(in_process)

        def export():
            from gemma3_tf.export import export_model

            path = export_model(causal_lm, os.path.join(paths["models"], "gemma3"), max_length=256)
            size = sum(os.path.getsize(f) for f in glob.glob(os.path.join(path, "**"), recursive=True)
                       if os.path.isfile(f))
            return path, f"{path} ({size / 1e9:.2f} GB)"

        report["export"] = stages.run(export)

        def start_server():
            from serving.client import RestClient

            grpc_port, rest_port = free_port(), free_port()
            batching = os.path.join(paths["models"], "batching_parameters.txt")  # written by the export
            process = subprocess.Popen(
                [sys.executable, "-m", "serving.server", "--model_name=gemma3",
                 f"--model_base_path={os.path.dirname(report['export'])}", f"--port={grpc_port}",
                 f"--rest_api_port={rest_port}", "--enable_batching", f"--batching_parameters_file={batching}",
                 "--rest_api_timeout_in_ms=0"])
            status = RestClient(f"http://localhost:{rest_port}", "gemma3", retries=60, backoff=0.5).status()
            state = status["model_version_status"][0]
            if state["state"] != "AVAILABLE":
                raise RuntimeError(f"the server could not load the export: {state}")
            return (process, grpc_port, rest_port), f"REST :{rest_port}, gRPC :{grpc_port}, version {state['version']}"

        server, grpc_port, rest_port = stages.run(start_server)

        def query():
            from serving.client import GrpcClient, RestClient

            rest = RestClient(f"http://localhost:{rest_port}", "gemma3", timeout=300)
            grpc = GrpcClient(f"localhost:{grpc_port}", "gemma3", timeout=300)
            answers = {name: [r["completion"] for r in client.generate(prompts, max_new_tokens=MAX_NEW_TOKENS)]
                       for name, client in (("rest", rest), ("grpc", grpc))}
            answers["equal_to_in_process"] = answers["rest"] == answers["grpc"] == expected
            return answers, f"REST == gRPC == in-process: {answers['equal_to_in_process']}; {answers['rest']!r}"

        report["query"] = stages.run(query)

        def batch_inference():
            from pipelines import batch_inference as job

            job.main(["--model_path", report["export"], "--input", data["prompts"], "--output_dir",
                      paths["batch_inference"], "--max_new_tokens", str(MAX_NEW_TOKENS), "--max_batch_size", "8"])
            counts = {"prompts": data["counts"]["prompts"],
                      "predictions": count_lines(os.path.join(paths["batch_inference"], "predictions-*")),
                      "errors": count_lines(os.path.join(paths["batch_inference"], "errors-*"))}
            counts["all_accounted_for"] = counts["predictions"] + counts["errors"] == counts["prompts"]
            return counts, (f"{counts['prompts']} prompts -> {counts['predictions']} predictions + "
                            f"{counts['errors']} errors")

        report["batch_inference"] = stages.run(batch_inference)
    finally:
        if server is not None:  # leave nothing running
            server.terminate()
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
    summary = stages.summary()
    print("\n" + summary)
    print("\nWritten:\n" + "\n".join(f"  {name:<24} {path}" for name, path in paths.items()))
    report["summary"] = summary
    with open(os.path.join(OUTPUT, "report.json"), "w") as file:
        json.dump(report, file, indent=1, default=str)
    ok = (report["train"]["loss"] < report["train"]["first_loss"] and report["query"]["equal_to_in_process"]
          and report["batch_inference"]["all_accounted_for"])
    print(f"\n{'OK' if ok else 'FAILED'}: loss went down, served == in-process, every prompt accounted for "
          f"(report: {os.path.join(OUTPUT, 'report.json')})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
