"""Max |difference| between gemma3-tf and keras-hub 0.32 (float32, same random weights), per case.

    .venv/bin/python benchmarks/keras_hub_parity.py [--json_out FILE]

Uses the test oracle in tests/keras_hub_oracle.py (weights shared through a .weights.h5 file);
the tests assert <= 1e-4, this prints the measured values for the README and closing notes.
"""

import argparse
import json
import os
import pathlib
import shlex
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

import gemma3_tf  # noqa: E402
from keras_hub_oracle import build_pair, text_inputs, text_only, vision_inputs  # noqa: E402

CASES = [
    ("text: soft caps, window 4 < 12 tokens, 7 layers, global RoPE x8, batch 3 padded", False, text_inputs(3, 12)),
    ("vision: 1 image per row, batch 2", True, vision_inputs((1, 1))),
    ("vision: 2/1/2 images per row, padded rows", True, vision_inputs((2, 1, 2))),
    ("vision model, 0 images (against keras-hub's text model)", True, vision_inputs((0, 0))),
]


def write_json(path, results, **settings):
    """`--json_out`: the rows printed above, the command that measured them and its settings."""
    python = os.path.relpath(sys.executable)
    command = shlex.join([sys.executable if python.startswith("..") else python, *sys.argv])
    with open(path, "w") as file:
        json.dump({"command": command, **settings, "results": results}, file, indent=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json_out", default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    rows = []
    directory = pathlib.Path(tempfile.mkdtemp())
    print("| case | hidden states | logits |\n|---|---|---|")
    for name, vision, inputs in CASES:
        reference, ours = build_pair(directory, vision=vision, seed=4)
        reference_inputs = inputs
        if vision and inputs["images"].shape[1] == 0:
            reference = text_only(reference)
            reference_inputs = {key: inputs[key] for key in ("token_ids", "padding_mask")}
        valid = inputs["padding_mask"].astype(bool)
        hidden = np.abs(np.asarray(reference(reference_inputs)) - np.asarray(ours(inputs)))[valid].max()
        reference_lm = keras_hub.models.Gemma3CausalLM(backbone=reference, preprocessor=None)
        logits = np.abs(np.asarray(reference_lm(reference_inputs)) - np.asarray(gemma3_tf.Gemma3CausalLM(ours)(inputs)))
        print(f"| {name} | {hidden:.1e} | {logits[valid].max():.1e} |", flush=True)
        rows.append({"case": name, "hidden_states": float(hidden), "logits": float(logits[valid].max())})
    if args.json_out:
        write_json(args.json_out, rows, seed=4, dtype="float32")


if __name__ == "__main__":
    main()
