"""Image-text rows -> sharded TFRecords of training examples (`gemma3_tf.data`'s schema), with Apache Beam.

    python -m pipelines.preprocess --input data/rows.jsonl --output_dir data/tfrecords \\
        [--preset gemma3_270m_q4_k_m] [--sequence_length 512] [--num_shards 8] [--direct_num_workers 2 ...]
    gemma3-tf preprocess ...                                            # the same flags
    ... --runner DataflowRunner --project P --region R --temp_location gs://B/tmp --setup_file ./setup.py

Input: JSONL manifests (`--input`, a glob), one row per line: {"id", "prompt", "response", "images":
[path or URL, ...]}. Each `<start_of_image>` in the prompt marks where the next image goes (a prompt
without any gets its images in front); image paths are relative to the manifest, absolute, `gs://`
(read through Beam's FileSystems) or http(s). Or a TFDS dataset prepared locally (`--tfds`).

Output in `--output_dir`: `train-SSSSS-of-NNNNN.tfrecord[.gz]` (each shard's examples sorted by id,
so the same input gives byte-identical shards), `rejected-*.jsonl` ({"row", "source", "line", "offset",
"reason", "reason_code"} for every row that could not become an example) and, when the job ends,
`schema.json` with the counts: every row read is either written or rejected. Rows that share an id are all
written (a training set may repeat an example on purpose); `repeated_ids` counts the rows beyond each id's
first. Batch inference, which promises one output per id, runs only the first.
"""

import argparse
import hashlib
import json
import logging

import apache_beam as beam
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from gemma3_tf import architecture, checkpoints
from gemma3_tf.data import SCHEMA_FILE, Schema, serialize_example, tokenizer_fingerprint
from gemma3_tf.preprocessing import (Gemma3CausalLMPreprocessor, Gemma3ImageConverter, chat_prompt,
                                     encoded_image_shape, images_in_front)
from gemma3_tf.refusals import InputError, raise_first
from gemma3_tf.request_limits import MAX_IMAGE_PIXELS
from gemma3_tf.tokenizer import Gemma3Tokenizer
from pipelines.rows import Line, ReadLines, Rejected, line_text, parse_jsonl_row, read_image

NAMESPACE = "gemma3_tf.preprocess"
REJECTED = "rejected"


# --- rows ------------------------------------------------------------------------------------
def parse_manifest_line(manifest, line):
    """A JSONL line -> a row dict with `id`, `prompt`, `response`, `images` (absolute paths/URLs)."""
    row = parse_jsonl_row(manifest, line)
    return {"id": row["id"], "prompt": row.get("prompt"), "response": row.get("response"), "images": row["images"]}


class PrepareExample(beam.DoFn):
    """A row -> (shard, (id, serialized tf.train.Example)), or a `rejected` output with the reason."""

    def __init__(self, settings, tokenizer_proto, has_vision_tokens):
        self.settings = settings
        self.tokenizer_proto = tokenizer_proto
        self.has_vision_tokens = has_vision_tokens
        self.counters = {}

    def setup(self):
        settings = self.settings
        tokenizer = Gemma3Tokenizer(self.tokenizer_proto, has_vision_tokens=self.has_vision_tokens)
        converter = Gemma3ImageConverter(settings["image_size"]) if settings["max_images_per_prompt"] else None
        self.preprocessor = Gemma3CausalLMPreprocessor(
            tokenizer, converter, sequence_length=settings["sequence_length"],
            max_images_per_prompt=settings["max_images_per_prompt"],
            num_vision_tokens_per_image=settings["num_vision_tokens_per_image"])

    def _count(self, name):
        if name not in self.counters:
            self.counters[name] = beam.metrics.Metrics.counter(NAMESPACE, name)
        self.counters[name].inc()

    def process(self, element):
        where, record = element  # (Line, bytes) of a manifest, or (TFDS split, row dict)
        self._count("rows_read")
        try:
            row = record if isinstance(record, dict) else parse_manifest_line(where.source, record)
            example = self.prepare(row)
        except Rejected as rejected:
            code, reason = rejected.code, str(rejected)
        except Exception as error:  # anything else wrong with one row must not stop the job
            code, reason = "error", f"{type(error).__name__}: {str(error).strip()[:500]}"
        else:
            self._count("examples_written")
            yield shard_of(row["id"], self.settings["num_shards"]), (row["id"], example)
            return
        self._count(f"rejected_{code}")
        yield beam.pvalue.TaggedOutput(REJECTED, {
            "row": _jsonable(record) if isinstance(record, dict) else line_text(record),
            **(where.fields() if isinstance(where, Line) else {"source": where}),
            "reason": reason, "reason_code": code})

    def prepare(self, row):
        settings = self.settings
        prompt, response, images = row["prompt"], row["response"], row["images"]
        if not isinstance(prompt, str):
            raise Rejected("empty_prompt", "`prompt` must be a non-empty string")
        if not isinstance(response, str) or not response.strip():
            raise Rejected("empty_response", "`response` must be a non-empty string (the loss is on it)")
        try:  # the model's own checks, as generation and the export run them
            raise_first(self.preprocessor.prompt_checks(tf.constant([prompt]), tf.constant([len(images)])))
        except InputError as refused:
            raise Rejected(refused.code, str(refused)) from None
        prompt = images_in_front(prompt, len(images))
        encoded = [self.resize_and_encode(image, "the image") if isinstance(image, bytes) else
                   self.resize_and_encode(read_image(image), image) for image in images]
        if settings["chat_template"]:
            prompt = chat_prompt([{"role": "user", "content": prompt}])
            response = response + "<end_of_turn>"
        features = self.preprocessor.training_features({"prompts": prompt, "responses": response})
        prompt_length = int(features.pop("prompt_lengths"))
        if prompt_length >= settings["sequence_length"]:
            raise Rejected("too_long", f"the prompt is {prompt_length} tokens (BOS and image tokens included); "
                                       f"--sequence_length={settings['sequence_length']} leaves no room for "
                                       "the response")
        features = {key: value.numpy() for key, value in features.items()}
        if "vision_indices" not in features:
            features["vision_mask"] = 0 * features["token_ids"]
            features["vision_indices"] = []
        return serialize_example(features, encoded, row["id"])

    def resize_and_encode(self, data, location):
        try:
            height, width = encoded_image_shape(tf.constant(data)).numpy()
            if height * width > MAX_IMAGE_PIXELS:  # refused before decoding: a worker would run out of memory
                raise Rejected("image_too_large", f"{location} is {width} x {height} pixels, over "
                                                  f"{MAX_IMAGE_PIXELS} pixels")
            pixels = self.preprocessor.image_converter.resize(tf.constant(data))
        except (tf.errors.InvalidArgumentError, ValueError) as error:
            message = getattr(error, "message", str(error)).splitlines()[0]
            raise Rejected("image_unreadable", f"{location} is not a readable image: {message}") from error
        pixels = tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)
        if self.settings["image_format"] == "png":
            return tf.io.encode_png(pixels).numpy()
        return tf.io.encode_jpeg(pixels, quality=95).numpy()


def _jsonable(row):
    """A row from a non-JSON source as JSON: images as their sizes, not their bytes."""
    images = [image if isinstance(image, str) else f"<{len(image)} bytes>" for image in row.get("images", [])]
    return {**row, "images": images}


def shard_of(example_id, num_shards):
    """A stable shard for an id (Python's `hash` differs between processes)."""
    return int(hashlib.md5(example_id.encode("utf-8")).hexdigest(), 16) % num_shards


def shard_path(output_dir, shard, num_shards, compression):
    suffix = ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"
    return FileSystems.join(output_dir, f"train-{shard:05d}-of-{num_shards:05d}{suffix}")


class WriteShard(beam.DoFn):
    """(shard, [(id, example)]) -> the shard's file, examples sorted by id; yields (shard, count).

    Sorting makes the bytes independent of bundle order; a shard's examples are held in memory
    while it is written, so choose --num_shards so that one shard fits a worker comfortably.
    """

    def __init__(self, output_dir, num_shards, compression):
        self.output_dir, self.num_shards, self.compression = output_dir, num_shards, compression

    def process(self, element):
        shard, examples = element
        examples = sorted(examples)
        with tf.io.TFRecordWriter(shard_path(self.output_dir, shard, self.num_shards, self.compression),
                                  tf.io.TFRecordOptions(compression_type=self.compression)) as writer:
            for _, example in examples:
                writer.write(example)
        yield shard, len(examples)


def write_schema(_, schema_fields, output_dir, num_shards, compression, read, written, rejected, repeated_ids):
    """Runs once at the end: empty files for shards that got no example, then `schema.json`."""
    for shard in sorted(set(range(num_shards)) - {shard for shard, _ in written}):
        with tf.io.TFRecordWriter(shard_path(output_dir, shard, num_shards, compression),
                                  tf.io.TFRecordOptions(compression_type=compression)):
            pass
    counts = {"read": read, "written": sum(count for _, count in written),
              "rejected": dict(sorted(rejected.items())), "repeated_ids": repeated_ids, "shards": num_shards}
    schema = Schema(**schema_fields, compression=compression, counts=counts)
    with FileSystems.create(FileSystems.join(output_dir, SCHEMA_FILE)) as file:
        file.write(schema.to_json().encode("utf-8"))
    logging.info("gemma3-tf preprocess: %s", json.dumps(counts))
    return counts


# --- the job ---------------------------------------------------------------------------------
def build_parser():
    parser = argparse.ArgumentParser(
        prog="gemma3-tf preprocess", description="Image-text rows -> TFRecords for gemma3-tf training "
        "(Apache Beam; other flags are Beam pipeline options such as --runner, --direct_num_workers).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="JSONL manifest(s), a file or glob (local or gs://)")
    source.add_argument("--tfds", help="a locally prepared TFDS dataset, NAME[:CONFIG]/SPLIT")
    parser.add_argument("--tfds_data_dir", default=None, help="TFDS data_dir of --tfds")
    parser.add_argument("--id_field", default="id", help="TFDS feature giving the row id (default: id)")
    parser.add_argument("--prompt_field", default="prompt", help="TFDS feature with the prompt")
    parser.add_argument("--response_field", default="response", help="TFDS feature with the response")
    parser.add_argument("--image_field", default=None, help="TFDS feature with an image or a sequence of them")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--preset", default="gemma3_270m_q4_k_m",
                        help="where the tokenizer (and the vision settings) come from: anything `from_preset` takes")
    parser.add_argument("--sequence_length", type=int, default=512)
    parser.add_argument("--image_size", type=int, default=None,
                        help="default: the preset's vision encoder's, else Gemma 3's 896")
    parser.add_argument("--max_images_per_prompt", type=int, default=None,
                        help="default: the preset's (2 for a vision model unless its preprocessor.json says "
                             "otherwise, 0 for a text-only one)")
    parser.add_argument("--num_vision_tokens_per_image", type=int, default=None,
                        help="default: the preset's vision encoder's, else Gemma 3's 256")
    parser.add_argument("--num_shards", type=int, default=8)
    parser.add_argument("--chat_template", action=argparse.BooleanOptionalAction, default=True,
                        help="wrap prompt and response in Gemma's chat turns (default on)")
    parser.add_argument("--image_format", choices=["jpeg", "png"], default="jpeg",
                        help="how resized images are stored (png: lossless, larger)")
    parser.add_argument("--compression", choices=["none", "gzip"], default="none")
    return parser


def resolve_settings(args):
    """Flags + the preset -> (settings for the workers, tokenizer proto, has_vision_tokens, Schema fields)."""
    for flag in ("sequence_length", "num_shards"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"error: --{flag} must be at least 1, got {getattr(args, flag)}")
    checkpoint = checkpoints.open_checkpoint(args.preset)
    tokenizer = Gemma3Tokenizer.from_preset(checkpoint)
    vision = checkpoint.backbone_config().get("vision_encoder") or {}
    image_size = args.image_size or vision.get("image_size", 896)
    tokens_per_image = args.num_vision_tokens_per_image or (
        architecture.tokens_per_image(vision["image_size"], vision["patch_size"], vision["pool_size"]) if vision
        else 256)
    if args.max_images_per_prompt is None:  # the data the preset's own model trains on
        packing = checkpoint.preprocessor_config() if hasattr(checkpoint, "preprocessor_config") else {}
        args.max_images_per_prompt = packing.get("max_images_per_prompt", 2) if vision else 0
    if args.max_images_per_prompt and not tokenizer.has_vision_tokens:
        raise SystemExit(f"error: the tokenizer of {args.preset} has no image tokens; use "
                         "--max_images_per_prompt 0 for text-only data")
    settings = {"sequence_length": args.sequence_length, "image_size": image_size,
                "max_images_per_prompt": args.max_images_per_prompt, "num_vision_tokens_per_image": tokens_per_image,
                "num_shards": args.num_shards, "chat_template": args.chat_template, "image_format": args.image_format}
    schema_fields = {key: settings[key] for key in ("sequence_length", "image_size", "max_images_per_prompt",
                                                    "num_vision_tokens_per_image", "chat_template", "image_format")}
    schema_fields["tokenizer_fingerprint"] = tokenizer_fingerprint(tokenizer)
    return settings, tokenizer.proto, tokenizer.has_vision_tokens, schema_fields


def read_rows(pipeline, args):
    """(source, JSONL line or row dict) pairs."""
    if args.input:
        return pipeline | "ReadManifests" >> ReadLines(args.input)
    from pipelines.tfds_source import read_tfds_rows

    return read_tfds_rows(pipeline, args)


def build_pipeline(pipeline, args, settings, tokenizer_proto, has_vision_tokens, schema_fields):
    compression = "GZIP" if args.compression == "gzip" else ""
    rows = read_rows(pipeline, args)
    prepared = rows | "Prepare" >> beam.ParDo(
        PrepareExample(settings, tokenizer_proto, has_vision_tokens)).with_outputs(REJECTED, main="examples")
    written = (prepared.examples
               | "GroupByShard" >> beam.GroupByKey()
               | "WriteShards" >> beam.ParDo(WriteShard(args.output_dir, settings["num_shards"], compression)))
    rejected = prepared[REJECTED]
    _ = (rejected | "RejectedToJson" >> beam.Map(lambda record: json.dumps(record, sort_keys=True))
         | "WriteRejected" >> beam.io.WriteToText(FileSystems.join(args.output_dir, "rejected"),
                                                  file_name_suffix=".jsonl"))
    read = rows | "CountRead" >> beam.combiners.Count.Globally()
    repeated_ids = (prepared.examples | "Ids" >> beam.Map(lambda pair: (pair[1][0], 1))
                    | "CountIds" >> beam.CombinePerKey(sum) | "Repeats" >> beam.Map(lambda pair: pair[1] - 1)
                    | "CountRepeats" >> beam.CombineGlobally(sum))
    rejected_by_reason = (rejected | "Reasons" >> beam.Map(lambda record: record["reason_code"])
                          | "CountReasons" >> beam.combiners.Count.PerElement()
                          | "ReasonsToList" >> beam.combiners.ToList())
    return (pipeline | "Once" >> beam.Create([None])
            | "WriteSchema" >> beam.Map(
                lambda _, read, written, rejected, repeated_ids: write_schema(
                    _, schema_fields, args.output_dir, settings["num_shards"], compression, read, written,
                    dict(rejected), repeated_ids),
                read=beam.pvalue.AsSingleton(read), written=beam.pvalue.AsList(written),
                rejected=beam.pvalue.AsSingleton(rejected_by_reason),
                repeated_ids=beam.pvalue.AsSingleton(repeated_ids)))


def main(argv=None):
    args, beam_args = build_parser().parse_known_args(argv)
    settings, tokenizer_proto, has_vision_tokens, schema_fields = resolve_settings(args)
    if not FileSystems.exists(args.output_dir):
        FileSystems.mkdirs(args.output_dir)
    options = PipelineOptions(beam_args, save_main_session=False)
    with beam.Pipeline(options=options) as pipeline:
        build_pipeline(pipeline, args, settings, tokenizer_proto, has_vision_tokens, schema_fields)
    counts = Schema.load(args.output_dir).counts
    print(f"gemma3-tf preprocess: {counts['read']} rows read, {counts['written']} examples written to "
          f"{args.output_dir} in {counts['shards']} shards, {sum(counts['rejected'].values())} rejected "
          f"{counts['rejected'] or ''}".rstrip() + (f", repeated ids: {counts['repeated_ids']} (written)"
                                                    if counts["repeated_ids"] else ""))
    return counts


if __name__ == "__main__":
    main()
