"""The Gemma 3 tokenizer: SentencePiece run in-graph by TF Text.

Built only from TF core and TF Text ops at call time, so it works eagerly, inside `tf.function`
and `tf.data`, and exports into a SavedModel that TF Serving runs. Its public API mirrors
keras-hub's `Gemma3Tokenizer` (a test oracle, never imported here).
"""

import dataclasses
import os
import uuid

import keras
import tensorflow as tf
import tensorflow_text as tf_text
from google.protobuf import message

from gemma3_tf import checkpoints, filesystem
from gemma3_tf.checkpoints import keras_preset
from gemma3_tf.presets import PRESETS
from gemma3_tf.sentencepiece_model import PIECE as _PIECE
from gemma3_tf.sentencepiece_model import ModelProto

VOCAB_FILENAME = "vocabulary.spm"  # keras-hub's asset name, so presets stay interchangeable

# Attribute -> piece. Each also gets an `<attribute>_id`, as in keras-hub.
TEXT_TOKENS = {
    "pad_token": "<pad>",
    "end_token": "<eos>",
    "start_token": "<bos>",
    "start_of_turn_token": "<start_of_turn>",
    "end_of_turn_token": "<end_of_turn>",
}
VISION_TOKENS = {
    "start_of_image_token": "<start_of_image>",
    "end_of_image_token": "<end_of_image>",
    "image_placeholder": "<img>",
}
ALL_TOKENS = {**TEXT_TOKENS, **VISION_TOKENS}
STOP_TOKENS = ("end_token", "end_of_turn_token")  # generation stops after either
GEMMA3_STOP_TOKEN_IDS = (1, 106)  # their ids in every Gemma 3 vocabulary: for models without a tokenizer




def _re2_literal(text):
    """`text` as an RE2 pattern: punctuation backslash-escaped, blanks and controls as \\x{..}."""

    def escape(c):
        if c.isalnum() or c == "_" or ord(c) > 127:
            return c
        return "\\" + c if c.isprintable() and c != " " else "\\x{%x}" % ord(c)

    return "".join(map(escape, text))


@dataclasses.dataclass(frozen=True)
class _Vocabulary:
    """Held in a plain object: Keras would otherwise track 262k list and dict entries (4 s)."""

    pieces: tuple = ()
    ids: dict = dataclasses.field(default_factory=dict)


def _parse_proto(proto):
    """Bytes and parsed `ModelProto` of `proto`, with errors that name the argument."""
    if isinstance(proto, (str, os.PathLike)):
        try:
            with tf.io.gfile.GFile(os.fspath(proto), "rb") as file:  # gs://... too
                proto = file.read()
        except (OSError, tf.errors.OpError) as e:
            raise ValueError(f"Cannot read the `proto` file {os.fspath(proto)!r}: {e}") from e
    if not isinstance(proto, bytes):
        raise ValueError("`proto` must be a serialized SentencePiece ModelProto (bytes) or the "
                         f"path of one. Received: {type(proto).__name__}")
    try:
        model = ModelProto.FromString(proto)
    except message.DecodeError as e:
        raise ValueError(f"`proto` ({len(proto)} bytes) is not a serialized SentencePiece "
                         f"ModelProto: {e}") from e
    unknown = sum(p.type == _PIECE.UNKNOWN for p in model.pieces)
    if unknown != 1:
        raise ValueError(f"`proto` ({len(proto)} bytes) is not a SentencePiece model: expected "
                         f"exactly one UNKNOWN piece, found {unknown}.")
    return proto, model


@keras.saving.register_keras_serializable(package="gemma3_tf")
class Gemma3Tokenizer(keras.layers.Layer):
    """Gemma 3 SentencePiece tokenizer layer, in-graph (TensorFlow backend).

    A string gives a dense `[None]` tensor; a 1-D batch a ragged `[batch, None]` one, or dense
    `[batch, sequence_length]` (truncated, or padded with `pad_token_id`) when that is set.
    Tokenize adds no BOS (the preprocessor does). Control pieces written literally in the
    text (`<start_of_turn>`, `<eos>`, `<unused0>`, ...) come out as their one id, as in HF's
    tokenizer; SentencePiece alone would spell them out piece by piece. Runs of more than 31
    spaces follow SentencePiece (and llama.cpp), not HF, which splits them differently.

    Detokenize renders every id, as HF's `decode(ids, skip_special_tokens=False)` does:
    control pieces (`<bos>`, `<pad>`, `<end_of_turn>`) appear literally rather than vanishing,
    so padding and stop tokens are the caller's to strip by id before decoding.

    Args:
        proto: a serialized SentencePiece `ModelProto` (bytes) or the path of one, e.g. a
            keras-hub preset's `assets/tokenizer/vocabulary.spm` or the output of
            `gemma3_tf.checkpoints.gguf_tokenizer.sentencepiece_proto_from_gguf`. `None` only
            to set it later with `set_proto`, as `from_config` does.
        sequence_length: if set, outputs are dense with this last dimension.
        has_vision_tokens: require the image tokens; without, their ids are -1 (keras-hub's rule).
    """

    presets = PRESETS

    def __init__(self, proto=None, sequence_length=None, has_vision_tokens=True, dtype="int32",
                 **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        if not self.compute_dtype.startswith(("int", "uint")):
            raise ValueError(f"`dtype` must be an integer type. Received: dtype={dtype!r}")
        self._convert_input_args = False  # keep tf.string tensors and Python strings as they are
        self._allow_non_tensor_positional_args = True
        self.built = True
        self.sequence_length = sequence_length
        self.has_vision_tokens = has_vision_tokens
        self.file_assets = [VOCAB_FILENAME]
        self.set_proto(proto)

    def set_proto(self, proto):
        """Loads the vocabulary: bytes, a file path, or `None` to unset it."""
        self.proto, self._sp = None, None
        self._vocab, self._special_pattern, self._special_ids = _Vocabulary(), None, ()
        for attr, piece in ALL_TOKENS.items():
            setattr(self, attr, piece)
            setattr(self, f"{attr}_id", None)
        self.unk_token_id = self.image_placeholder_token_id = None
        if proto is None:
            return
        proto, model = _parse_proto(proto)
        pieces = tuple(p.piece for p in model.pieces)
        vocab = _Vocabulary(pieces, {piece: i for i, piece in enumerate(pieces)})
        wanted = {**TEXT_TOKENS, **(VISION_TOKENS if self.has_vision_tokens else {})}
        for attr, piece in wanted.items():
            if piece not in vocab.ids:
                raise ValueError(f"`proto` has no piece {piece!r}, which a Gemma 3 tokenizer "
                                 f"needs for `{attr}_id`.")
        # HF treats every CONTROL piece and the UNKNOWN one as an atomic special token. Longest
        # first: RE2 takes the first alternative that matches, not the longest.
        specials = sorted((p.piece for p in model.pieces
                           if p.type in (_PIECE.UNKNOWN, _PIECE.CONTROL)), key=lambda p: -len(p))
        try:
            # Names unique across processes: a reloaded SavedModel gives two SentencePiece resources of the
            # same name one shared model (TF Text's op keys its resource by node name), so two exports
            # loaded into one process must not share a name. Neither TensorFlow nor Keras offers names
            # unique beyond one process (Keras' get_uid restarts at clear_session).
            uid = uuid.uuid4().hex[:12]
            self._sp = tf_text.SentencepieceTokenizer(model=proto, name=f"gemma3_spm_{uid}")
        except tf.errors.OpError as e:
            raise ValueError(f"`proto` is not a loadable SentencePiece model: {e.message}") from e
        self.proto, self._vocab = proto, vocab
        self.unk_token_id = next(i for i, p in enumerate(model.pieces) if p.type == _PIECE.UNKNOWN)
        self._special_pattern = "|".join(map(_re2_literal, specials))
        self._special_ids = tuple(sorted(vocab.ids[piece] for piece in specials))
        for attr, piece in ALL_TOKENS.items():
            setattr(self, f"{attr}_id", vocab.ids[piece] if attr in wanted else -1)
        self.image_placeholder_token_id = self.image_placeholder_id  # the name this project uses

    @property
    def stop_token_ids(self):
        """The ids after which generation stops (`STOP_TOKENS`: `<eos>`, `<end_of_turn>`)."""
        return tuple(getattr(self, f"{name}_id") for name in STOP_TOKENS)

    @property
    def resources(self):
        """The TF Text SentencePiece objects a SavedModel must track to run this tokenizer."""
        self._require_proto()
        return (self._sp,)

    @property
    def special_tokens(self):
        return sorted(set(ALL_TOKENS.values()))

    @property
    def special_token_ids(self):
        self._require_proto()
        return sorted({getattr(self, f"{a}_id") for a in ALL_TOKENS} - {-1})

    def _require_proto(self):
        if self.proto is None:
            raise ValueError("No vocabulary has been set for Gemma3Tokenizer: pass `proto` to the "
                             "constructor or call `set_proto(proto)`.")

    def vocabulary_size(self):
        self._require_proto()
        return len(self._vocab.pieces)

    def get_vocabulary(self):
        self._require_proto()
        return list(self._vocab.pieces)

    def id_to_token(self, id):
        self._require_proto()
        if not 0 <= id < len(self._vocab.pieces):
            raise ValueError(f"`id` must be in [0, {len(self._vocab.pieces) - 1}]. "
                             f"Received: id={id}")
        return self._vocab.pieces[id]

    def token_to_id(self, token):
        """The piece's id; the unknown id for a string that is not a piece, as SentencePiece."""
        self._require_proto()
        if isinstance(token, bytes):
            token = token.decode("utf-8")
        return self._vocab.ids.get(token, self.unk_token_id)

    def _encode(self, texts):
        # Specials are cut out and looked up whole; the text between them is tokenized on its
        # own, as HF does. tf_text.regex_split stops at a NUL byte, so each special is wrapped
        # in 0xFF bytes instead (never found in UTF-8 once malformed bytes become U+FFFD, as
        # SentencePiece would make them) and the string split there: odd parts are specials.
        texts = tf.strings.unicode_transcode(texts, "UTF-8", "UTF-8", errors="replace",
                                             replacement_char=0xFFFD)
        marked = tf.strings.regex_replace(texts, f"({self._special_pattern})", b"\xff\\1\xff")
        parts = tf.strings.split(marked, b"\xff")
        flat = parts.flat_values
        is_special = tf.ragged.range(parts.row_lengths()).flat_values % 2 == 1
        ordinary = self._sp.tokenize(tf.where(is_special, "", flat))
        special = tf.RaggedTensor.from_row_lengths(
            self._sp.string_to_id(tf.boolean_mask(flat, is_special)),
            tf.cast(is_special, ordinary.row_splits.dtype))
        return parts.with_flat_values(tf.concat([special, ordinary], axis=1)).merge_dims(1, 2)

    def tokenize(self, inputs):
        self._require_proto()
        with tf.device("cpu"):
            inputs = tf.convert_to_tensor(inputs, dtype=tf.string)
            if inputs.shape.rank not in (0, 1):
                raise ValueError("`inputs` must be a string or a 1-D batch of strings. "
                                 f"Received shape: {inputs.shape}")
            scalar = inputs.shape.rank == 0
            tokens = self._encode(inputs[tf.newaxis] if scalar else inputs)
            if self.sequence_length:
                shape = tokens.shape[:-1].as_list() + [self.sequence_length]
                tokens = tokens.to_tensor(default_value=self.pad_token_id, shape=shape)
            if scalar:
                tokens = tokens[0]
            return tf.cast(tokens, self.compute_dtype)

    def _decode(self, ids):
        """[N, (T)] ids -> [N] texts. The mirror of `_encode`: specials render as their piece, and
        SentencePiece decodes each run of other ids between them. One SentencePiece model serves both
        ways (a second, in which the specials decode as text, cost 5 MB of graph constants per signature and
        90 MiB in a server holding the export)."""
        flat, rows = ids.flat_values, ids.value_rowids()
        special_ids = tf.constant(self._special_ids, flat.dtype)
        is_special = tf.gather(special_ids, tf.minimum(
            tf.searchsorted(special_ids, flat), len(self._special_ids) - 1)) == flat
        # A run starts at each row's first id, at each special and after each special.
        previous_row = tf.concat([[-1], rows], 0)[:-1]
        after_special = tf.concat([[False], is_special], 0)[:-1]
        run_starts = tf.where((rows != previous_row) | is_special | after_special)[:, 0]
        runs = tf.RaggedTensor.from_row_starts(flat, run_starts)
        run_texts = tf.where(tf.gather(is_special, run_starts),
                             self._sp.id_to_string(tf.gather(flat, run_starts)), self._sp.detokenize(runs))
        by_row = tf.RaggedTensor.from_value_rowids(run_texts, tf.gather(rows, run_starts), nrows=ids.nrows())
        return tf.strings.reduce_join(by_row, axis=1)

    def detokenize(self, inputs):
        """Ids [..., T] (dense or ragged) -> texts [...]."""
        self._require_proto()
        with tf.device("cpu"):
            if not isinstance(inputs, tf.RaggedTensor):
                inputs = tf.convert_to_tensor(inputs)
                if inputs.shape.rank < 2:
                    return self.detokenize(tf.reshape(inputs, [1, -1]))[0]
                inputs = tf.RaggedTensor.from_tensor(inputs, ragged_rank=inputs.shape.rank - 1)
            inputs = tf.cast(inputs, tf.int32)
            if inputs.ragged_rank == 1 and inputs.shape.rank == 2:
                return self._decode(inputs)
            return inputs.with_values(self.detokenize(inputs.values))

    def call(self, inputs):
        return self.tokenize(inputs)

    def compute_output_spec(self, input_spec):
        return keras.KerasTensor(input_spec.shape + (self.sequence_length,),
                                 dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        # The vocabulary travels as an asset (`save_assets`) or through `set_proto`.
        config.update(proto=None, sequence_length=self.sequence_length,
                      has_vision_tokens=self.has_vision_tokens)
        return config

    def save_assets(self, dir_path):
        with open(os.path.join(dir_path, VOCAB_FILENAME), "wb") as file:
            file.write(self.proto)

    def load_assets(self, dir_path):
        self.set_proto(os.path.join(dir_path, VOCAB_FILENAME))

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """The tokenizer of any checkpoint `Gemma3Backbone.from_preset` reads; `kwargs` go to the constructor.

        `has_vision_tokens` defaults to whether the vocabulary has the image pieces.
        """
        proto = checkpoints.open_checkpoint(preset).tokenizer_proto()
        if "has_vision_tokens" not in kwargs:
            pieces = {piece.piece for piece in ModelProto.FromString(proto).pieces}
            kwargs["has_vision_tokens"] = set(VISION_TOKENS.values()) <= pieces
        return cls(proto, **kwargs)

    def save_to_preset(self, preset_dir):
        """Writes `tokenizer.json` and `assets/tokenizer/vocabulary.spm` as keras-hub does."""
        with filesystem.local_directory(preset_dir) as local_dir:
            keras_preset.save_tokenizer(self, local_dir)

    def export_to_transformers(self, path):
        """Writes `tokenizer.model`, the tokenizer file of a transformers checkpoint, as keras-hub's does."""
        from gemma3_tf.checkpoints import huggingface

        huggingface.save_tokenizer(self, path)
