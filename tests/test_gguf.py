"""GGUF checkpoints: the real Gemma 3 270M against HF transformers' logits, and damaged files."""

import gguf as gguf_package
import numpy as np
import pytest

import gemma3_tf
from gemma3_tf.checkpoints import gguf

LOGIT_TOLERANCE = 2e-3


@pytest.mark.slow
def test_real_270m_logits_match_hf_transformers(real_causal_lm, hf_reference_270m):
    for case in hf_reference_270m["prompts"]:
        token_ids = np.array([case["input_ids"]], "int32")
        logits = np.asarray(real_causal_lm({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}))[0]
        top_ids = case["last_pos_top10_ids"]
        assert np.argsort(-logits[-1])[:10].tolist() == top_ids, case["prompt"]
        np.testing.assert_allclose(logits[-1, top_ids], case["last_pos_top10_logits"], atol=LOGIT_TOLERANCE)
        assert logits.argmax(-1).tolist() == case["per_pos_top1_id"], case["prompt"]


@pytest.mark.slow
def test_real_270m_config_from_metadata(gguf_checkpoint):
    config = gguf_checkpoint.backbone_config()
    expected = {"vocabulary_size": 262144, "num_layers": 18, "num_query_heads": 4, "num_key_value_heads": 1,
                "hidden_dim": 640, "intermediate_dim": 2048, "head_dim": 256, "sliding_window_size": 512,
                "query_head_dim_normalize": True, "global_rope_scaling_factor": 1.0}
    assert {key: config[key] for key in expected} == expected


def write_tiny_gguf(path, architecture="gemma3", layers=1, hidden=8, drop=None):
    """A GGUF with the metadata and F32 tensors of a tiny Gemma 3, written with the gguf package."""
    writer = gguf_package.GGUFWriter(str(path), architecture)
    writer.add_block_count(layers)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_key_length(4)
    writer.add_value_length(4)
    writer.add_sliding_window(4)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_token_list([f"t{i}" for i in range(32)])
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (32, hidden), "output_norm.weight": (hidden,)}
    for i in range(layers):
        shapes.update({
            f"blk.{i}.attn_norm.weight": (hidden,), f"blk.{i}.attn_q.weight": (8, hidden),
            f"blk.{i}.attn_k.weight": (4, hidden), f"blk.{i}.attn_v.weight": (4, hidden),
            f"blk.{i}.attn_q_norm.weight": (4,), f"blk.{i}.attn_k_norm.weight": (4,),
            f"blk.{i}.attn_output.weight": (hidden, 8), f"blk.{i}.post_attention_norm.weight": (hidden,),
            f"blk.{i}.ffn_norm.weight": (hidden,), f"blk.{i}.ffn_gate.weight": (16, hidden),
            f"blk.{i}.ffn_up.weight": (16, hidden), f"blk.{i}.ffn_down.weight": (hidden, 16),
            f"blk.{i}.post_ffw_norm.weight": (hidden,),
        })
    for name, shape in shapes.items():
        if name != drop:
            writer.add_tensor(name, rng.normal(size=shape).astype("float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def load(path):
    checkpoint = gguf.GGUFCheckpoint(path)
    return gemma3_tf.Gemma3Backbone.from_preset(checkpoint, progress=False), checkpoint.reader


def test_tiny_gguf_layouts(tmp_path):
    backbone, reader = load(write_tiny_gguf(tmp_path / "tiny.gguf"))
    tensors = {tensor.name: np.asarray(tensor.data) for tensor in reader.tensors}
    weights = {weight.path: weight.numpy() for weight in backbone.weights}
    # Norms lose llama.cpp's folded `1 +`; (out, in) matrices become Keras kernels.
    np.testing.assert_allclose(weights["final_normalization/scale"], tensors["output_norm.weight"] - 1)
    np.testing.assert_allclose(weights["decoder_block_0/ffw_linear/kernel"], tensors["blk.0.ffn_down.weight"].T)
    query = weights["decoder_block_0/attention/query/kernel"]  # [heads, hidden, head_dim]
    np.testing.assert_allclose(query[1, :, 2], tensors["blk.0.attn_q.weight"][1 * 4 + 2])
    output = weights["decoder_block_0/attention/attention_output/kernel"]  # [heads, head_dim, hidden]
    np.testing.assert_allclose(output[1, 3, :], tensors["blk.0.attn_output.weight"][:, 1 * 4 + 3])


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file not found: .*missing.gguf"):
        gguf.open_gguf(str(tmp_path / "missing.gguf"))

    with pytest.raises(ValueError, match=r"`general.architecture` is 'llama'; only 'gemma3'"):
        gguf.open_gguf(write_tiny_gguf(tmp_path / "llama.gguf", architecture="llama"))

    full = write_tiny_gguf(tmp_path / "full.gguf")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(open(full, "rb").read()[:600])
    with pytest.raises(ValueError, match="not a readable GGUF file \\(truncated or corrupt\\?\\)"):
        gguf.open_gguf(str(truncated))

    with pytest.raises(ValueError, match=r"lacks 1 weights of the model, e.g. \['decoder_block_0/ffw_linear/kernel'\]"):
        load(write_tiny_gguf(tmp_path / "partial.gguf", drop="blk.0.ffn_down.weight"))

    reader = gguf.open_gguf(write_tiny_gguf(tmp_path / "two_layers.gguf", layers=2))
    one_layer = gemma3_tf.Gemma3Backbone(**dict(gguf.backbone_config(reader), num_layers=1))
    with pytest.raises(ValueError, match="`blk.1.attn_norm.weight` maps to `decoder_block_1/pre_attention_norm/scale`"):
        gguf.load_weights(one_layer, reader, progress=False)

    wider = gemma3_tf.Gemma3Backbone(**dict(gguf.backbone_config(reader), intermediate_dim=32))
    with pytest.raises(ValueError, match=r"`blk.0.ffn_gate.weight` has shape \(16, 8\) .* expects \(8, 32\)"):
        gguf.load_weights(wider, reader, progress=False)
