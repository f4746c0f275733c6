"""Rows of a locally prepared TFDS dataset for `pipelines.preprocess` (`--tfds NAME[:CONFIG]/SPLIT`)."""

import apache_beam as beam


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else None if value is None else str(value)


def tfds_row(example, id_field, prompt_field, response_field, image_field):
    """A TFDS example (numpy values) -> a pipeline row; images stay encoded bytes (TFDS's SkipDecoding)."""
    images = example.get(image_field) if image_field else None
    if images is None:
        images = []
    elif isinstance(images, bytes):
        images = [images]
    else:
        images = [bytes(image) for image in images]
    row_id = example.get(id_field, example.get("tfds_id"))
    return {"id": _text(row_id), "prompt": _text(example.get(prompt_field)),
            "response": _text(example.get(response_field)), "images": images}


def read_tfds_rows(pipeline, args):
    """(source, row dict) pairs read with `tfds.beam.ReadFromTFDS`; rows without an id field get TFDS's
    stable `tfds_id`."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    name, slash, split = args.tfds.rpartition("/")
    if not slash or not name or not split:
        raise SystemExit(f"error: --tfds must be NAME[:CONFIG]/SPLIT, got {args.tfds!r}")
    try:
        builder = tfds.builder(name.replace(":", "/"), data_dir=args.tfds_data_dir)
    except Exception as error:  # TFDS raises several kinds for unknown or unprepared datasets
        raise SystemExit(f"error: cannot open TFDS dataset {name!r} in {args.tfds_data_dir}: {error}") from error
    decoders = {args.image_field: tfds.decode.SkipDecoding()} if args.image_field else None
    fields = (args.id_field, args.prompt_field, args.response_field, args.image_field)
    return (pipeline
            | "ReadTFDS" >> tfds.beam.ReadFromTFDS(builder, split, decoders=decoders,
                                                   read_config=tfds.ReadConfig(add_tfds_id=True))
            | "TFDSRows" >> beam.Map(
                lambda example: (args.tfds, tfds_row(tf.nest.map_structure(lambda t: t.numpy(), example), *fields))))
