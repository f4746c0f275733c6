"""Checks that transformers loads what `gemma3-tf convert --format hf` writes and gives the golden logits.

Run from the repository root, first with this project's environment, then with transformers':

    for name in gemma3_text gemma3_text_qpas gemma3_multimodal; do
        .venv/bin/gemma3-tf convert tests/data/hf_tiny/$name /tmp/hf_export/$name --format hf
    done
    /tmp/hfenv/bin/python tests/data/check_transformers_loads_export.py /tmp/hf_export

The tiny directories carry no tokenizer, so the export holds transformers' default image token
ids; the multimodal check takes the tiny model's ids (68, 69, 70) from its original config.
"""

import json
import pathlib
import sys

import numpy as np
import torch
import transformers

HF_TINY = pathlib.Path(__file__).parent / "hf_tiny"


def main(export_root):
    for name in ("gemma3_text", "gemma3_text_qpas", "gemma3_multimodal"):
        golden = np.load(HF_TINY / name / "golden.npz")
        kwargs = dict(input_ids=torch.tensor(golden["input_ids"]).long(),
                      attention_mask=torch.tensor(golden["attention_mask"]).long())
        if name.endswith("multimodal"):
            model = transformers.Gemma3ForConditionalGeneration.from_pretrained(
                pathlib.Path(export_root) / name, attn_implementation="eager")
            original = json.loads((HF_TINY / name / "config.json").read_text())
            model.config.image_token_id = model.model.config.image_token_id = original["image_token_index"]
            kwargs.update(pixel_values=torch.tensor(golden["pixel_values"]),
                          token_type_ids=torch.tensor(golden["token_type_ids"]).long())
        else:
            model = transformers.Gemma3ForCausalLM.from_pretrained(
                pathlib.Path(export_root) / name, attn_implementation="eager")
        with torch.no_grad():
            logits = model.eval()(**kwargs).logits.numpy()
        valid = golden["attention_mask"].astype(bool)
        print(f"{name}: max |logits - golden| = {np.abs(logits[valid] - golden['logits'][valid]).max():.2e}")


if __name__ == "__main__":
    main(sys.argv[1])
