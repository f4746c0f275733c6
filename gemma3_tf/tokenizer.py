"""The Gemma 3 tokenizer: SentencePiece run in-graph by TF Text.

Built only from TF core and TF Text ops at call time, so it works eagerly, inside `tf.function`
and `tf.data`, and exports into a SavedModel that TF Serving runs. Its public API mirrors
keras-hub's `Gemma3Tokenizer` (a test oracle, never imported here).
"""

import dataclasses
import os

import keras
import tensorflow as tf
import tensorflow_text as tf_text
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

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


def _build_model_proto_class():
    """SentencePiece's `ModelProto`, restricted to the fields this project reads or writes.

    `sentencepiece.sentencepiece_model_pb2` (0.2.3) was generated for protobuf 7 and refuses to
    import under the protobuf 6 that Beam caps us to, so the schema is declared here (field
    numbers from sentencepiece_model.proto). Undeclared fields survive a parse/serialize round
    trip as unknown fields. Defaults are declared only where a field is read but may be absent.
    """
    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="gemma3_tf/sentencepiece_model.proto", package="gemma3_tf.spm", syntax="proto2"
    )

    def add(msg, name, number, kind, type_name=None, default=None, repeated=False):
        field = msg.field.add(name=name, number=number, type=kind)
        field.label = f.LABEL_REPEATED if repeated else f.LABEL_OPTIONAL
        if type_name:
            field.type_name = ".gemma3_tf.spm." + type_name
        if default is not None:
            field.default_value = default

    def add_enum(msg, name, values):
        enum = msg.enum_type.add(name=name)
        for value_name, number in values.items():
            enum.value.add(name=value_name, number=number)

    trainer = file.message_type.add(name="TrainerSpec")
    add_enum(trainer, "ModelType", {"UNIGRAM": 1, "BPE": 2, "WORD": 3, "CHAR": 4})
    add(trainer, "model_type", 3, f.TYPE_ENUM, "TrainerSpec.ModelType", "UNIGRAM")
    add(trainer, "vocab_size", 4, f.TYPE_INT32)
    add(trainer, "byte_fallback", 35, f.TYPE_BOOL)
    for number, name in enumerate(["unk_id", "bos_id", "eos_id", "pad_id"], start=40):
        add(trainer, name, number, f.TYPE_INT32)
    add(trainer, "unk_surface", 44, f.TYPE_STRING)
    for number, name in enumerate(["unk_piece", "bos_piece", "eos_piece", "pad_piece"], start=45):
        add(trainer, name, number, f.TYPE_STRING)

    normalizer = file.message_type.add(name="NormalizerSpec")
    add(normalizer, "name", 1, f.TYPE_STRING)
    add(normalizer, "precompiled_charsmap", 2, f.TYPE_BYTES)
    add(normalizer, "add_dummy_prefix", 3, f.TYPE_BOOL, default="true")
    add(normalizer, "remove_extra_whitespaces", 4, f.TYPE_BOOL, default="true")
    add(normalizer, "escape_whitespaces", 5, f.TYPE_BOOL, default="true")

    model = file.message_type.add(name="ModelProto")
    piece = model.nested_type.add(name="SentencePiece")
    types = {"NORMAL": 1, "UNKNOWN": 2, "CONTROL": 3, "USER_DEFINED": 4, "BYTE": 6, "UNUSED": 5}
    add_enum(piece, "Type", types)
    add(piece, "piece", 1, f.TYPE_STRING)
    add(piece, "score", 2, f.TYPE_FLOAT)
    add(piece, "type", 3, f.TYPE_ENUM, "ModelProto.SentencePiece.Type", "NORMAL")
    add(model, "pieces", 1, f.TYPE_MESSAGE, "ModelProto.SentencePiece", repeated=True)
    add(model, "trainer_spec", 2, f.TYPE_MESSAGE, "TrainerSpec")
    add(model, "normalizer_spec", 3, f.TYPE_MESSAGE, "NormalizerSpec")

    pool = descriptor_pool.DescriptorPool()  # private: never clashes with sentencepiece's own
    pool.AddSerializedFile(file.SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("gemma3_tf.spm.ModelProto"))


ModelProto = _build_model_proto_class()
_PIECE = ModelProto.SentencePiece  # its enum values: _PIECE.NORMAL, _PIECE.CONTROL, ...


def _re2_literal(text):
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


class Gemma3Tokenizer(keras.layers.Layer):
    """Gemma 3 SentencePiece tokenizer layer, in-graph (TensorFlow backend).

    A scalar string gives a dense `[None]` tensor; a batch (rank >= 1) a ragged `[..., None]`
    one, or dense `[..., sequence_length]` padded with `pad_token_id` when that is set.
    Tokenize adds no BOS (the preprocessor does). Control pieces written literally in the
    text (`<start_of_turn>`, `<eos>`, `<unused0>`, ...) come out as their one id, as in HF's
    tokenizer; SentencePiece alone would spell them out piece by piece.

    Detokenize renders every id, as HF's `decode(ids, skip_special_tokens=False)` does:
    control pieces (`<bos>`, `<pad>`, `<end_of_turn>`) appear literally rather than vanishing,
    so padding and stop tokens are the caller's to strip by id before decoding.

    Args:
        proto: a serialized SentencePiece `ModelProto` (bytes) or the path of one, e.g. a
            keras-hub preset's `assets/tokenizer/vocabulary.spm` or the output of
            `gemma3_tf.checkpoints.gguf_tokenizer.sentencepiece_proto_from_gguf`. `None` only
            to set it later with `set_proto`, as `from_config` does.
        sequence_length: if set, outputs are dense, truncated or padded to this length.
        has_vision_tokens: require the image tokens; without, their ids are -1 (keras-hub's rule).
    """

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
        self.proto, self._sp, self._sp_render = None, None, None
        self._vocab, self._special_pattern = _Vocabulary(), None
        for attr, piece in ALL_TOKENS.items():
            setattr(self, attr, piece)
            setattr(self, f"{attr}_id", None)
        self.unk_token_id = self.image_placeholder_token_id = None
        if proto is None:
            return
        if isinstance(proto, (str, os.PathLike)):
            try:
                with open(proto, "rb") as file:
                    proto = file.read()
            except OSError as e:
                raise ValueError(f"Cannot read the `proto` file {os.fspath(proto)!r}: {e}") from e
        if not isinstance(proto, bytes):
            raise ValueError("`proto` must be a serialized SentencePiece ModelProto (bytes) or "
                             f"the path of one. Received: {type(proto).__name__}")
        model = ModelProto()
        try:
            model.ParseFromString(proto)
        except message.DecodeError as e:
            raise ValueError(f"`proto` ({len(proto)} bytes) is not a serialized SentencePiece "
                             f"ModelProto: {e}") from e
        unknown = [i for i, p in enumerate(model.pieces) if p.type == _PIECE.UNKNOWN]
        if len(unknown) != 1:
            raise ValueError(f"`proto` ({len(proto)} bytes) is not a SentencePiece model: expected "
                             f"exactly one UNKNOWN piece, found {len(unknown)}.")
        # HF's tokenizer treats every CONTROL (and the UNKNOWN) piece as an atomic special token.
        specials = sorted((p.piece for p in model.pieces if p.type in (_PIECE.UNKNOWN, _PIECE.CONTROL)),
                          key=lambda piece: (-len(piece), piece))
        # A copy in which CONTROL pieces decode to their own text, and unk to its piece.
        render = ModelProto.FromString(proto)
        for piece in render.pieces:
            if piece.type == _PIECE.CONTROL:
                piece.type = _PIECE.USER_DEFINED
        render.trainer_spec.unk_surface = model.pieces[unknown[0]].piece
        try:
            self._sp = tf_text.SentencepieceTokenizer(model=proto)
            self._sp_render = tf_text.SentencepieceTokenizer(model=render.SerializeToString())
        except tf.errors.OpError as e:
            raise ValueError(f"`proto` is not a loadable SentencePiece model: {e.message}") from e
        pieces = tuple(p.piece for p in model.pieces)
        self.proto, self._vocab = proto, _Vocabulary(pieces, {p: i for i, p in enumerate(pieces)})
        self.unk_token_id = unknown[0]
        self._special_pattern = "|".join(map(_re2_literal, specials)) or None
        self._update_special_token_ids()

    def _update_special_token_ids(self):
        wanted = {**TEXT_TOKENS, **(VISION_TOKENS if self.has_vision_tokens else {})}
        for attr, piece in ALL_TOKENS.items():
            if attr in wanted and piece not in self._vocab.ids:
                raise ValueError(f"`proto` has no piece {piece!r}, which a Gemma 3 tokenizer needs "
                                 f"for `{attr}_id`.")
            setattr(self, f"{attr}_id", self._vocab.ids[piece] if attr in wanted else -1)
        self.image_placeholder_token_id = self.image_placeholder_id  # the name this project uses

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
        if self._special_pattern is None:
            return self._sp.tokenize(texts)
        # Cut the special pieces out first, then tokenize the text between them on its own.
        parts = tf_text.regex_split(texts, self._special_pattern, self._special_pattern)
        flat = parts.flat_values
        is_special = tf.strings.regex_full_match(flat, self._special_pattern)
        ordinary = self._sp.tokenize(tf.where(is_special, "", flat))
        special = tf.RaggedTensor.from_row_lengths(
            tf.boolean_mask(self._sp.string_to_id(flat), is_special),
            tf.cast(is_special, ordinary.row_splits.dtype))
        return parts.with_flat_values(tf.concat([special, ordinary], axis=1)).merge_dims(-2, -1)

    def tokenize(self, inputs):
        self._require_proto()
        with tf.device("cpu"):
            inputs = tf.convert_to_tensor(inputs, dtype=tf.string)
            scalar = inputs.shape.rank == 0
            tokens = self._encode(inputs[tf.newaxis] if scalar else inputs)
            if self.sequence_length:
                shape = tokens.shape[:-1].as_list() + [self.sequence_length]
                tokens = tokens.to_tensor(default_value=self.pad_token_id, shape=shape)
            if scalar:
                tokens = tokens[0]
            return tf.cast(tokens, self.compute_dtype)

    def detokenize(self, inputs):
        self._require_proto()
        with tf.device("cpu"):
            if not isinstance(inputs, tf.RaggedTensor):
                inputs = tf.convert_to_tensor(inputs)
            if inputs.shape.rank == 0:
                inputs = inputs[tf.newaxis]
            return self._sp_render.detokenize(tf.cast(inputs, tf.int32))

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
