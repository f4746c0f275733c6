"""Rebuilds Gemma's SentencePiece model from the tokenizer metadata of a llama.cpp GGUF file.

llama.cpp copies the pieces, scores and types of Gemma's `tokenizer.model` into the GGUF
metadata but not the model's settings, and changes two things on the way; the function below
puts them back so that the proto tokenizes exactly as HF's tokenizer does:
- id 3 `<unk>` is stored as CONTROL; SentencePiece needs it UNKNOWN (exactly one such piece).
- the user-defined whitespace-run pieces (ids 138-167 in Gemma 3) hold literal spaces, while
  SentencePiece matches them after escaping spaces to U+2581, so they would never match.
The settings are Gemma's: BPE with byte fallback, identity normaliser, no dummy prefix, no
whitespace folding or removal.
"""

import numpy as np

from gemma3_tf.sentencepiece_model import ModelProto

SPACE_SYMBOL = "\u2581"  # '▁', SentencePiece's escaped space
_PIECE = ModelProto.SentencePiece
_GGUF_TOKEN_TYPES = {  # llama.cpp's token types, numbered as SentencePiece's piece types
    1: _PIECE.NORMAL, 2: _PIECE.UNKNOWN, 3: _PIECE.CONTROL, 4: _PIECE.USER_DEFINED,
    5: _PIECE.UNUSED, 6: _PIECE.BYTE,
}
_SPECIAL_IDS = {  # GGUF field suffix -> (TrainerSpec id field, TrainerSpec piece field)
    "unknown_token_id": ("unk_id", "unk_piece"),
    "bos_token_id": ("bos_id", "bos_piece"),
    "eos_token_id": ("eos_id", "eos_piece"),
    "padding_token_id": ("pad_id", "pad_piece"),
}


def _field(reader, name, required=True):
    field = reader.fields.get(name)
    if field is None:
        if required:
            raise ValueError(f"GGUF field `{name}` is missing: this file has no Gemma "
                             "(SentencePiece) tokenizer.")
        return None
    return field


def _scalar(reader, name, required=True):
    field = _field(reader, name, required)
    return None if field is None else field.contents()


def _array(reader, name):
    field = _field(reader, name)
    # One numpy part per element: concatenating them is ~100x faster than `contents()`.
    return np.concatenate([field.parts[i] for i in field.data]) if field.data else np.array([])


def sentencepiece_proto_from_gguf(reader):
    """Returns a serialized SentencePiece `ModelProto` (bytes) for a Gemma GGUF's tokenizer.

    Args:
        reader: a `gguf.GGUFReader` (`gguf.open_gguf(path)` or `GGUFCheckpoint(path).reader`).

    Raises:
        ValueError: the file holds no Gemma SentencePiece tokenizer; the message names the
            field, what was expected and what was found.
    """
    architecture = _scalar(reader, "general.architecture", required=False)
    if architecture is not None and not str(architecture).startswith("gemma"):
        raise ValueError(f"GGUF field `general.architecture`: expected a Gemma model "
                         f"('gemma', 'gemma2', 'gemma3', ...), found {architecture!r}.")
    model_type = _scalar(reader, "tokenizer.ggml.model")
    if model_type != "llama":
        raise ValueError(f"GGUF field `tokenizer.ggml.model`: expected 'llama' (a SentencePiece "
                         f"tokenizer, as Gemma's), found {model_type!r}.")
    if _scalar(reader, "tokenizer.ggml.add_space_prefix", required=False):
        raise ValueError("GGUF field `tokenizer.ggml.add_space_prefix`: expected False (Gemma "
                         "adds no dummy prefix), found True.")

    tokens_field = _field(reader, "tokenizer.ggml.tokens")
    tokens = [bytes(tokens_field.parts[i]).decode("utf-8") for i in tokens_field.data]
    scores = _array(reader, "tokenizer.ggml.scores")
    types = _array(reader, "tokenizer.ggml.token_type")
    for name, values in (("scores", scores), ("token_type", types)):
        if len(values) != len(tokens):
            raise ValueError(f"GGUF field `tokenizer.ggml.{name}`: expected {len(tokens)} "
                             f"values (one per token), found {len(values)}.")
    unknown_types = sorted(set(types.tolist()) - set(_GGUF_TOKEN_TYPES))
    if unknown_types:
        raise ValueError(f"GGUF field `tokenizer.ggml.token_type`: expected values in "
                         f"{sorted(_GGUF_TOKEN_TYPES)}, found {unknown_types}.")
    special = {}
    for suffix in _SPECIAL_IDS:
        index = int(_scalar(reader, f"tokenizer.ggml.{suffix}"))
        if not 0 <= index < len(tokens):
            raise ValueError(f"GGUF field `tokenizer.ggml.{suffix}`: expected an id in "
                             f"[0, {len(tokens)}), found {index}.")
        special[suffix] = index
    unk_id = special["unknown_token_id"]

    model = ModelProto()
    for index, (token, score, kind) in enumerate(zip(tokens, scores.tolist(), types.tolist())):
        kind = _GGUF_TOKEN_TYPES[kind]
        if index == unk_id:
            kind = _PIECE.UNKNOWN
        elif kind == _PIECE.UNKNOWN:  # another UNKNOWN would make the model unloadable
            kind = _PIECE.CONTROL
        if kind == _PIECE.USER_DEFINED:
            token = token.replace(" ", SPACE_SYMBOL)
        model.pieces.add(piece=token, score=score, type=kind)

    trainer = model.trainer_spec
    trainer.model_type = type(trainer).BPE
    trainer.vocab_size = len(tokens)
    trainer.byte_fallback = True
    for suffix, (id_field, piece_field) in _SPECIAL_IDS.items():
        setattr(trainer, id_field, special[suffix])
        setattr(trainer, piece_field, model.pieces[special[suffix]].piece)
    normalizer = model.normalizer_spec
    normalizer.name = "identity"
    normalizer.precompiled_charsmap = b""
    normalizer.add_dummy_prefix = False
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return model.SerializeToString()
