"""SentencePiece's `ModelProto` schema, declared here rather than imported.

`sentencepiece.sentencepiece_model_pb2` (0.2.3) was generated for protobuf 7 and refuses to import
under the protobuf 6 that Beam caps us to.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def _build_model_proto_class():
    """SentencePiece's `ModelProto`, restricted to the fields this project reads or writes.

    Field numbers are those of sentencepiece_model.proto. Undeclared fields survive a parse/serialize round
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
PIECE = ModelProto.SentencePiece  # its enum values: _PIECE.NORMAL, _PIECE.CONTROL, ...
