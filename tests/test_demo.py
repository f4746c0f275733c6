"""`make demo` in fast mode (DEMO_FAST=1: a tiny random model with the real tokenizer), every stage checked."""

import glob
import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_every_stage_and_leaves_nothing_running(tmp_path):
    output = tmp_path / "demo"
    env = dict(os.environ, DEMO_FAST="1", DEMO_OUTPUT=str(output))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-m", "demo"], cwd=root, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "OK: loss went down, served == in-process, every prompt accounted for" in run.stdout
    report = json.loads((output / "report.json").read_text())
    stages = [line.split("  ")[0] for line in report["summary"].splitlines()[1:-1]]
    assert stages == ["data", "preprocess image-text (Beam)", "preprocess instructions (Beam)", "fine-tune (LoRA)",
                      "in-process completions", "export SavedModel", "start server", "query REST + gRPC",
                      "batch inference (Beam)"]
    assert report["captions"]["written"] == 8 and report["instructions"]["written"] == 16
    assert glob.glob(str(output / "tfrecords_captions" / "train-*.tfrecord"))
    assert report["train"]["loss"] < report["train"]["first_loss"]
    assert os.path.isfile(output / "train" / "final" / "config.json")
    assert os.path.isfile(os.path.join(report["export"], "saved_model.pb"))
    assert report["query"]["rest"] == report["query"]["grpc"] and report["query"]["equal_to_in_process"]
    counts = report["batch_inference"]
    assert (counts["predictions"], counts["errors"]) == (counts["prompts"] - 1, 1)  # the empty prompt
    assert not [command for command in map(command_line, glob.glob("/proc/[0-9]*/cmdline"))
                if "serving.server" in command and str(output) in command]


def command_line(path):
    try:
        with open(path, "rb") as file:
            return file.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # the process ended meanwhile
        return ""
