"""Record tiny random Gemma 3 checkpoints saved by Hugging Face transformers.

Run with a Python environment that has torch + transformers (5.x) installed:

    /tmp/hfenv/bin/python tests/data/record_hf_tiny_checkpoints.py [NAME ...]   # all, or the ones named

Writes into tests/data/hf_tiny/:

    gemma3_text/        Gemma3ForCausalLM, 7 layers, soft caps 2.0/3.0, linear rope x8 on global layers
    gemma3_text_qpas/   Gemma3ForCausalLM, query_pre_attn_scalar (16) != head_dim (8), no soft caps
    gemma3_text_qpas_12/  as gemma3_text_qpas with query_pre_attn_scalar 12: neither head_dim (8) nor
                        hidden_size / num_attention_heads (16), a value keras-hub cannot express
    gemma3_multimodal/  Gemma3ForConditionalGeneration (SigLIP tower), saved SHARDED

Each directory holds config.json, generation_config.json, the safetensors
file(s) exactly as ``save_pretrained`` wrote them, and ``golden.npz`` with the
inputs and the float32 logits of an eager-attention forward pass.

Everything is deterministic: weights come from a seeded ``torch.Generator``,
inputs from a seeded ``numpy.random.Generator``. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import torch
import transformers
from transformers import (
    Gemma3Config,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    SiglipVisionConfig,
)

OUT_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_tiny")

# Layers 0-4 and 6 sliding, layer 5 global (sliding window pattern 6).
LAYER_TYPES = [
    "sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(7)
]
ROPE_PARAMETERS = {
    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
}

# Vision / special tokens for the multimodal model.
BOI, EOI, IMG = 68, 69, 70
MM_TOKENS_PER_IMAGE = 4


def text_config_kwargs(**overrides):
    kw = dict(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=7,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=8,
        sliding_window=4,
        layer_types=list(LAYER_TYPES),
        rope_parameters=json.loads(json.dumps(ROPE_PARAMETERS)),  # deep copy
        attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=128,
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        attention_dropout=0.0,
    )
    kw.update(overrides)
    return kw


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Overwrite EVERY parameter (norm weights, biases, projections...) with randn*0.3."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied params are yielded once
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * 0.3)


def check_text_config(cfg: Gemma3TextConfig, model_text: torch.nn.Module) -> None:
    """Make sure the rope / sliding settings really took effect."""
    assert cfg.layer_types == LAYER_TYPES, cfg.layer_types
    assert cfg.sliding_window == 4, cfg.sliding_window
    rp = cfg.rope_parameters
    assert rp["full_attention"]["rope_type"] == "linear", rp
    assert rp["full_attention"]["factor"] == 8.0, rp
    assert rp["full_attention"]["rope_theta"] == 1_000_000.0, rp
    assert rp["sliding_attention"]["rope_type"] == "default", rp
    assert rp["sliding_attention"]["rope_theta"] == 10_000.0, rp
    d = cfg.head_dim
    exps = torch.arange(0, d, 2, dtype=torch.float) / d
    want_global = 1.0 / (1_000_000.0**exps) / 8.0
    want_local = 1.0 / (10_000.0**exps)
    rot = model_text.rotary_emb
    torch.testing.assert_close(rot.full_attention_inv_freq, want_global)
    torch.testing.assert_close(rot.sliding_attention_inv_freq, want_local)
    assert rot.full_attention_attention_scaling == 1.0
    assert rot.sliding_attention_attention_scaling == 1.0
    for i, layer in enumerate(model_text.layers):
        attn = layer.self_attn
        sliding = LAYER_TYPES[i] == "sliding_attention"
        assert attn.is_sliding == sliding
        assert attn.sliding_window == (4 if sliding else None)
        assert abs(attn.scaling - cfg.query_pre_attn_scalar**-0.5) < 1e-12


def text_inputs(seed: int, vocab: int):
    rng = np.random.default_rng(seed)
    B, T = 3, 12
    lengths = [12, 9, 6]
    ids = rng.integers(1, vocab, size=(B, T)).astype(np.int32)
    mask = np.zeros((B, T), np.int32)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        ids[b, n:] = 0
    ids[:, 0] = 2  # BOS, as a real prompt would start
    return ids, mask


def load_roundtrip_logits(cls, path, feed):
    m = cls.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        return m(**feed).logits.numpy()


def record_text(name: str, seed: int, **overrides) -> dict:
    out_dir = os.path.join(OUT_ROOT, name)
    cfg = Gemma3TextConfig(**text_config_kwargs(**overrides))
    cfg._attn_implementation = "eager"
    print(f"\n===== {name}: Gemma3TextConfig =====")
    print(cfg)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(cfg).to(torch.float32).eval()
    randomize_(model, seed)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "not tied"
    check_text_config(model.config, model.model)

    ids, mask = text_inputs(seed, cfg.vocab_size)
    feed = dict(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
    with torch.no_grad():
        out = model(**feed, output_hidden_states=True)
        base = model.model(**feed)
    logits = out.logits.numpy().astype(np.float32)
    h_last = base.last_hidden_state.numpy().astype(np.float32)

    # hidden_states[-1] is the final *normed* state (capture_outputs ties it to last_hidden_state).
    np.testing.assert_array_equal(out.hidden_states[-1].numpy(), h_last)
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1
    # ... and the logits are lm_head(h_last) with the final soft cap.
    re = torch.from_numpy(h_last) @ model.model.embed_tokens.weight.T
    if cfg.final_logit_softcapping is not None:
        re = torch.tanh(re / cfg.final_logit_softcapping) * cfg.final_logit_softcapping
    np.testing.assert_allclose(re.numpy(), logits, rtol=1e-5, atol=1e-5)

    findings = {}
    # Does attn_logit_softcapping change anything? (Gemma3Attention does not pass softcap.)
    if cfg.attn_logit_softcapping is not None:
        cfg2 = Gemma3TextConfig(**text_config_kwargs(**{**overrides, "attn_logit_softcapping": None}))
        cfg2._attn_implementation = "eager"
        m2 = Gemma3ForCausalLM(cfg2).eval()
        m2.load_state_dict(model.state_dict())
        with torch.no_grad():
            l2 = m2(**feed).logits.numpy()
        findings["attn_softcap_max_abs_effect"] = float(np.abs(l2 - logits).max())
    if cfg.final_logit_softcapping is not None:
        findings["final_softcap_max_abs_effect"] = float(
            np.abs(np.asarray(torch.from_numpy(h_last) @ model.model.embed_tokens.weight.T) - logits).max()
        )

    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    np.savez(
        os.path.join(out_dir, "golden.npz"),
        input_ids=ids,
        attention_mask=mask,
        logits=logits,
        hidden_states_last=h_last,
    )
    rt = load_roundtrip_logits(Gemma3ForCausalLM, out_dir, feed)
    np.testing.assert_array_equal(rt, logits)
    print(f"{name}: logits {logits.shape}, roundtrip OK, findings {findings}")
    return findings


def multimodal_inputs(seed: int, text_vocab_hi: int):
    rng = np.random.default_rng(seed)

    def txt(n):
        return list(rng.integers(3, text_vocab_hi, size=n))

    block = [BOI] + [IMG] * MM_TOKENS_PER_IMAGE + [EOI]
    row0 = [2] + txt(3) + block + txt(2) + block + txt(2)
    row1 = [2] + txt(1) + block + txt(9)
    T = 20
    assert len(row0) == T and len(row1) == T - 3, (len(row0), len(row1))
    ids = np.zeros((2, T), np.int32)
    mask = np.zeros((2, T), np.int32)
    ids[0] = row0
    mask[0] = 1
    ids[1, : len(row1)] = row1
    mask[1, : len(row1)] = 1
    vision_mask = (ids == IMG).astype(np.int32)
    token_type_ids = vision_mask.copy()
    max_img = 2
    vision_indices = np.zeros((2, max_img * MM_TOKENS_PER_IMAGE), np.int32)
    for b in range(2):
        pos = np.nonzero(vision_mask[b])[0]
        vision_indices[b, : len(pos)] = pos
    n_images = [2, 1]
    pixel_values = rng.uniform(-1.0, 1.0, size=(sum(n_images), 3, 28, 28)).astype(np.float32)
    images = np.zeros((2, max_img, 28, 28, 3), np.float32)
    k = 0
    for b in range(2):
        for i in range(n_images[b]):
            images[b, i] = pixel_values[k].transpose(1, 2, 0)
            k += 1
    return dict(
        input_ids=ids,
        attention_mask=mask,
        token_type_ids=token_type_ids,
        pixel_values=pixel_values,
        images=images,
        vision_mask=vision_mask,
        vision_indices=vision_indices,
    )


def record_multimodal(name: str, seed: int) -> dict:
    out_dir = os.path.join(OUT_ROOT, name)
    text_cfg = Gemma3TextConfig(**text_config_kwargs(vocab_size=72))
    vision_cfg = SiglipVisionConfig(
        image_size=28,
        patch_size=7,
        hidden_size=8,
        num_attention_heads=2,
        num_hidden_layers=2,
        intermediate_size=16,
        layer_norm_eps=1e-6,
        hidden_act="gelu_pytorch_tanh",
        num_channels=3,
        vision_use_head=False,  # as in the released Gemma 3 checkpoints
    )
    cfg = Gemma3Config(
        text_config=text_cfg,
        vision_config=vision_cfg,
        mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
        image_token_index=IMG,
        boi_token_index=BOI,
        eoi_token_index=EOI,
        tie_word_embeddings=True,
    )
    cfg._attn_implementation = "eager"
    cfg.text_config._attn_implementation = "eager"
    cfg.vision_config._attn_implementation = "eager"
    print(f"\n===== {name}: Gemma3Config =====")
    print(cfg)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(cfg).to(torch.float32).eval()
    randomize_(model, seed)
    lm = model.model.language_model
    assert model.lm_head.weight.data_ptr() == lm.embed_tokens.weight.data_ptr(), "not tied"
    check_text_config(model.config.text_config, lm)
    proj = model.model.multi_modal_projector
    assert proj.patches_per_image == 4 and proj.tokens_per_side == 2 and proj.kernel_size == 2

    inp = multimodal_inputs(seed, text_vocab_hi=64)
    feed = dict(
        input_ids=torch.from_numpy(inp["input_ids"]).long(),
        attention_mask=torch.from_numpy(inp["attention_mask"]).long(),
        token_type_ids=torch.from_numpy(inp["token_type_ids"]).long(),
        pixel_values=torch.from_numpy(inp["pixel_values"]),
    )
    with torch.no_grad():
        out = model(**feed, output_hidden_states=True)
        base = model.model(**feed)
        causal = model(**{k: v for k, v in feed.items() if k != "token_type_ids"})
        img_feats = model.model.get_image_features(feed["pixel_values"]).pooler_output
    logits = out.logits.numpy().astype(np.float32)
    h_last = base.last_hidden_state.numpy().astype(np.float32)
    np.testing.assert_array_equal(out.hidden_states[-1].numpy(), h_last)

    findings = {}
    # Bidirectional-within-image vs purely causal (no token_type_ids).
    diff = np.abs(causal.logits.numpy() - logits)
    first_img = [int(np.nonzero(inp["vision_mask"][b])[0][0]) for b in range(2)]
    findings["bidir_vs_causal_max_abs_diff"] = float(diff.max())
    findings["bidir_vs_causal_diff_before_first_image_token"] = float(
        max(diff[b, : first_img[b]].max() for b in range(2))
    )
    findings["bidir_vs_causal_diff_on_first_image_token"] = float(
        max(diff[b, first_img[b]].max() for b in range(2))
    )
    # Is final_logit_softcapping applied by Gemma3ForConditionalGeneration?
    raw = torch.from_numpy(h_last) @ lm.embed_tokens.weight.T
    capped = torch.tanh(raw / 3.0) * 3.0
    findings["mm_logits_minus_uncapped_max_abs"] = float(np.abs(raw.numpy() - logits).max())
    findings["mm_logits_minus_capped_max_abs"] = float(np.abs(capped.numpy() - logits).max())
    # Are image token embeddings replaced after sqrt(hidden) scaling? (input to layer 0)
    emb0 = out.hidden_states[0].numpy()
    vm = inp["vision_mask"].astype(bool)
    np.testing.assert_allclose(emb0[vm], img_feats.reshape(-1, img_feats.shape[-1]).numpy(), rtol=0, atol=0)
    scaled = (lm.embed_tokens.weight[feed["input_ids"]] * (16**0.5)).detach().numpy()
    np.testing.assert_allclose(emb0[~vm], scaled[~vm], rtol=1e-6, atol=1e-6)
    findings["image_features_replace_scaled_embeddings_unscaled"] = True

    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size="20KB")
    np.savez(
        os.path.join(out_dir, "golden.npz"),
        logits=logits,
        hidden_states_last=h_last,
        image_features=img_feats.numpy().astype(np.float32),
        # HF's Gemma3ForConditionalGeneration does NOT apply final_logit_softcapping
        # (Gemma3ForCausalLM does). This is what the logits would be with the cap applied.
        logits_final_softcapped=capped.numpy().astype(np.float32),
        # Same forward pass WITHOUT token_type_ids: purely causal attention over image tokens.
        logits_causal=causal.logits.numpy().astype(np.float32),
        **inp,
    )
    rt = load_roundtrip_logits(Gemma3ForConditionalGeneration, out_dir, feed)
    np.testing.assert_array_equal(rt, logits)
    print(f"{name}: logits {logits.shape}, roundtrip OK, findings {findings}")
    return findings


@torch.no_grad()
def main() -> int:
    torch.manual_seed(0)
    np.random.seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    os.makedirs(OUT_ROOT, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    qpas = dict(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=8, intermediate_size=64,
                attn_logit_softcapping=None, final_logit_softcapping=None)
    cases = {
        "gemma3_text": lambda: record_text("gemma3_text", seed=1),
        "gemma3_text_qpas": lambda: record_text("gemma3_text_qpas", seed=2, query_pre_attn_scalar=16, **qpas),
        "gemma3_text_qpas_12": lambda: record_text("gemma3_text_qpas_12", seed=4, query_pre_attn_scalar=12, **qpas),
        "gemma3_multimodal": lambda: record_multimodal("gemma3_multimodal", seed=3),
    }
    unknown = sorted(set(sys.argv[1:]) - set(cases))
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; known: {sorted(cases)}")
    findings = {name: record() for name, record in cases.items() if name in (sys.argv[1:] or cases)}
    print("\n===== findings =====")
    print(json.dumps(findings, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
