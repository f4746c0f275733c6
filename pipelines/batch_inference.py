"""Batch inference with the exported SavedModel: prompts -> completions, with Apache Beam's RunInference.

    python -m pipelines.batch_inference --model_path models/gemma3/1 --input 'data/prompts-*.jsonl' \\
        --output_dir out/ [--max_new_tokens 64 --temperature 0.7 --top_k 64 --seed 1] [--max_batch_size 16] \\
        [--length_buckets 64 128 ... | --no-bucket_by_length] \\
        [--direct_num_workers 2 --direct_running_mode multi_processing ...]
    gemma3-tf batch-infer ...                                           # the same flags
    ... --runner DataflowRunner --project P --region R --temp_location gs://B/tmp --setup_file ./setup.py \\
        --machine_type n2-highmem-8 --max_num_workers 20 --experiments=use_runner_v2 --large_model

The model is a version directory `BASE/NAME/N` of `gemma3-tf export` (local or `gs://`); its basename N
is the `model_version` of every output. Workers run that SavedModel only (TensorFlow + TF Text), never
gemma3_tf's model code, so the outputs are what TF Serving would answer.

Input (`--input`, a glob; the format from the extension or `--input_format`):
- JSONL, one prompt a line: {"id", "prompt", "images"?: [path or URL, ...]}. Prompts go to the model
  as they are (no chat template added); each `<start_of_image>` marks where the next image goes (a
  prompt without any gets its images in front). Image paths are relative to the JSONL file, absolute,
  `gs://` (any Beam filesystem) or http(s). A row without an id gets one from the hash of its line.
- `*.tfrecord[.gz]` written by `pipelines/preprocess.py`: the prompt of each example is its tokens
  before the response, detokenized with the export's own vocabulary (`assets/vocabulary.spm`, which
  must be the tokenizer the records were made with: `schema.json`'s fingerprint is checked), and
  each image block turned back into `<start_of_image>`; so the prompt is the one training saw, chat
  turns included, and the stored (resized) images are its images. This decoding imports
  `gemma3_tf.data` and the tokenizer on the workers; JSONL input does not import gemma3_tf at all (the
  model's refusals are read with `serving.refusals`).

Batches hold prompts of similar length (`BatchByLength`; `--length_buckets`, boundaries in prompt bytes, an
image counted as IMAGE_LENGTH bytes): a batch's rows are padded to its longest, so one long prompt among
short ones makes each of them cost as much as it does.

Output in `--output_dir`: `predictions-SSSSS-of-NNNNN.jsonl` ({"id", "prompt", "completion",
"num_tokens", "model_version"}) and `errors-SSSSS-of-NNNNN.jsonl` ({"id"?, "row" or "prompt",
"reason", "reason_code"}): every row read is in exactly one of them. A batch the model refuses is
split: the row its refusal names goes to the errors (the refusal's code is its reason code), the rest is
run again, so one bad row costs one extra call and loses nothing. Counters (namespace
`gemma3_tf.batch_inference`): rows_read, predictions_written, errors_<reason_code>, batches, model_calls.
"""

import argparse
import bisect
import dataclasses
import json
import logging
import posixpath
import time
import zlib

import apache_beam as beam
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from serving import refusals
from pipelines.rows import ReadLines, ReadRecords, Rejected, first_of_each_id, line_text, parse_jsonl_row, read_image

NAMESPACE = "gemma3_tf.batch_inference"
ERRORS = "errors"
START_OF_IMAGE = "<start_of_image>"  # gemma3_tf.preprocessing's; not imported, workers stay off the model code
GENERATION_FLAGS = {"max_new_tokens": int, "temperature": float, "top_k": int, "top_p": float, "seed": int}
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecord.gz")
ROW_FIELDS = ("prompt", "images")  # a refusal of one of these, naming a row, is that row's alone
# Length buckets, in prompt bytes (about 4 per token): each holds lengths within 2x of each other, so padding
# costs a batch at most about as much as its rows.
LENGTH_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
# What one image weighs in a prompt's length: its 256 tokens (4B and up) at the 4 bytes per token above. A
# guess only decides which batch a row joins, never what it computes.
IMAGE_LENGTH = 1024
# Rows per group of one bucket (`BatchByLength`): groups are what workers share out, and only a batch that
# straddles two groups mixes lengths.
ROWS_PER_GROUP = 256

logger = logging.getLogger(NAMESPACE)


def count(name, value=1):
    beam.metrics.Metrics.counter(NAMESPACE, name).inc(value)


def error_record(code, reason, **fields):
    count(f"errors_{code}")
    return beam.pvalue.TaggedOutput(ERRORS, {**fields, "reason": reason, "reason_code": code})


# --- rows ------------------------------------------------------------------------------------
def parse_prompt_line(source, line):
    """A JSONL line -> {"id", "prompt", "image_paths"} (absolute paths/URLs), or Rejected."""
    row = parse_jsonl_row(source, line)
    prompt = row.get("prompt")
    if prompt is None:
        raise Rejected("missing_prompt", "the row has no `prompt`", row["id"])
    if not isinstance(prompt, str):  # what a prompt says is the model's to judge: it refuses an empty one
        raise Rejected("empty_prompt", "`prompt` must be a string", row["id"])
    return {"id": row["id"], "prompt": prompt, "image_paths": row["images"]}


class ReadJsonlRow(beam.DoFn):
    """(Line, bytes) -> (id, example {"id", "prompt", "images": [bytes], "image_paths", "line"}), or an `errors`
    record."""

    def process(self, element):
        where, line = element
        count("rows_read")
        row = None
        try:
            row = parse_prompt_line(where.source, line)
            row["images"] = [read_image(location) for location in row["image_paths"]]
        except Exception as error:  # anything wrong with one row must not stop the job
            code, reason = ((error.code, str(error)) if isinstance(error, Rejected) else
                            ("error", f"{type(error).__name__}: {str(error).strip()[:500]}"))
            row_id = getattr(error, "row_id", None) or (row or {}).get("id")
            yield error_record(code, reason, **({} if row_id is None else {"id": row_id}), row=line_text(line),
                               **where.fields())
            return
        yield row["id"], {**row, "line": where}


def decode_prompt(token_ids, loss_mask, tokenizer, num_vision_tokens_per_image):
    """A training example's prompt text: its tokens before the response, BOS dropped, image blocks
    (what `Gemma3CausalLMPreprocessor` expands `<start_of_image>` into) back to `<start_of_image>`."""
    response = [index for index, weight in enumerate(loss_mask) if weight]
    prompt_ids = list(token_ids[: response[0] if response else len(token_ids)])
    if prompt_ids and prompt_ids[0] == tokenizer.start_token_id:
        prompt_ids = prompt_ids[1:]
    text = tokenizer.detokenize(tf.constant([prompt_ids], tf.int32)).numpy()[0].decode("utf-8")
    block = (f"\n\n{START_OF_IMAGE}" + tokenizer.image_placeholder * num_vision_tokens_per_image
             + f"{tokenizer.end_of_image_token}\n\n")
    return text.replace(block, START_OF_IMAGE)


class ReadTFRecordRow(beam.DoFn):
    """A serialized example of pipelines/preprocess.py -> (id, example), or an `errors` record."""

    def __init__(self, schema, model_path):
        self.schema, self.model_path = schema, model_path

    def setup(self):
        from gemma3_tf.data import parse_example

        self.parse_example = parse_example
        self.tokenizer = export_tokenizer(self.model_path)

    def process(self, element):
        where, record = element
        count("rows_read")
        try:
            raw = tf.io.parse_single_example(record, {"id": tf.io.FixedLenFeature([], tf.string),
                                                      "images": tf.io.VarLenFeature(tf.string)})
            row_id = raw["id"].numpy().decode("utf-8")
            features = self.parse_example(record, self.schema, with_images=False)
            prompt = decode_prompt(features["token_ids"].numpy().tolist(), features["loss_mask"].numpy().tolist(),
                                   self.tokenizer, self.schema.num_vision_tokens_per_image)
        except Exception as error:  # a record that does not follow the schema must not stop the job
            yield error_record("bad_record", f"{type(error).__name__}: {str(error).strip()[:500]}",
                               row=f"<{len(record)} bytes>", **where.fields())
            return
        images = list(raw["images"].values.numpy())
        yield row_id, {"id": row_id, "prompt": prompt, "images": images, "line": where,
                       "image_paths": [f"<stored image {i}: {len(image)} bytes>" for i, image in enumerate(images)]}


class DropRepeatedIds(beam.DoFn):
    """(id, row) -> itself for the first row of its id (in file and line order), else an `errors` record: each
    id comes out exactly once, and the repeats are reported rather than run."""

    def process(self, pair, repeated):
        row_id, row = pair
        if row_id in repeated and row["line"] != repeated[row_id][1]:
            copies, first = repeated[row_id]
            yield error_record("duplicate_id", f"id {row_id!r} is on {copies} rows; only the first ({first.source} "
                               f"line {first.number}) is run", id=row_id, prompt=row["prompt"], **row["line"].fields())
            return
        yield pair


def export_tokenizer(model_path):
    """The tokenizer of the export (its `assets/vocabulary.spm`), for decoding TFRecord prompts."""
    from gemma3_tf.tokenizer import VOCAB_FILENAME, Gemma3Tokenizer

    with FileSystems.open(FileSystems.join(model_path, "assets", VOCAB_FILENAME)) as file:
        return Gemma3Tokenizer(file.read(), has_vision_tokens=False)


# --- batching --------------------------------------------------------------------------------
def prompt_length(example):
    """The batching length of an example: its prompt's UTF-8 bytes, plus IMAGE_LENGTH per image."""
    return len(example["prompt"].encode("utf-8")) + IMAGE_LENGTH * len(example["images"])


class BatchByLength(beam.PTransform):
    """(id, example) pairs -> the same pairs, those of one length bucket next to each other, so that the batches
    RunInference's BatchElements cuts from them hold prompts of one bucket.

    Beam's own length-aware batching (RunInference's `batch_length_fn`) runs only on its stateful path,
    whose processing-time timer the DirectRunner's FnApiRunner and Prism do not support (it falls back to
    the legacy runner, which fails on this job). So: a GroupByKey on (bucket, group), with each bucket cut
    into groups of about `rows_per_group` rows (by a hash of the id: stable across retries) so that a big
    bucket spreads over many workers, then each group's rows in a row. The shuffle carries whole rows, their
    image bytes included; a job whose prompts are all alike in length saves it with `--no-bucket_by_length`.
    """

    def __init__(self, boundaries, rows_per_group=ROWS_PER_GROUP):
        super().__init__()
        self.boundaries, self.rows_per_group = list(boundaries), rows_per_group

    def expand(self, pairs):
        boundaries, rows_per_group = self.boundaries, self.rows_per_group
        bucketed = pairs | "Bucket" >> beam.Map(lambda pair: (bisect.bisect_right(boundaries, prompt_length(pair[1])),
                                                              pair))
        groups = beam.pvalue.AsDict(
            bucketed | "Buckets" >> beam.Keys() | "CountPerBucket" >> beam.combiners.Count.PerElement()
            | "GroupsPerBucket" >> beam.MapTuple(lambda bucket, rows: (bucket, -(-rows // rows_per_group))))

        def group_key(element, groups):
            bucket, pair = element
            return (bucket, zlib.crc32(pair[0].encode("utf-8")) % groups[bucket]), pair

        return (bucketed | "GroupKey" >> beam.Map(group_key, groups) | "Group" >> beam.GroupByKey()
                | "InGroupOrder" >> beam.FlatMap(lambda group: group[1]))


# --- the model -------------------------------------------------------------------------------
class SavedModelGenerator:
    """The reloaded SavedModel's `generate` behind plain Python in and out: what a model shared
    across processes (`--large_model`) needs, as calls to it are pickled."""

    def __init__(self, model_path):
        from serving.op_libraries import register_op_libraries

        register_op_libraries(model_path)  # the TF Text ops the exported tokenizer runs on
        self.model_path = model_path
        self.loaded = tf.saved_model.load(model_path)

    def generate(self, prompts, images, parameters):
        """[B] prompts, [B, N] image bytes (b"" padding) or None, {name: scalar} -> {"completion",
        "num_tokens"} lists, or {"error": the model's message} when it refuses the batch."""
        inputs = {"prompt": tf.constant(prompts, tf.string)}
        if images is not None:
            inputs["images"] = tf.constant(images, tf.string)
        for name, value in parameters.items():
            inputs[name] = tf.constant(value, tf.float32 if GENERATION_FLAGS[name] is float else tf.int32)
        try:
            result = self.loaded.generate(**inputs)
        except tf.errors.InvalidArgumentError as error:
            return {"error": error.message}
        return {"completion": [text.decode("utf-8", errors="replace") for text in result["completion"].numpy()],
                "num_tokens": result["num_tokens"].numpy().tolist()}


def model_refusal(message):
    """The model's refusal in an error message (its code is the reason code), or a `model_error` for any
    other error."""
    refusal = refusals.parse(message)
    if refusal is None:
        reason = next((line.strip() for line in message.splitlines()
                       if line.strip() and "Graph execution error" not in line), message)
        return refusals.Refusal("model_error", "", None, reason[:500])
    return dataclasses.replace(refusal, message=refusal.message[:500])


class Gemma3SavedModelHandler(ModelHandler):
    """RunInference's handler of a `gemma3-tf export`: examples are {"prompt", "images": [bytes]} dicts,
    inferences {"completion", "num_tokens"} or, for a row the model refuses, {"reason", "reason_code"}.

    Args:
        model_path: the version directory.
        generation: {name: value} of the generation parameters to send (the model's defaults for
            the others), the same for every row; with a fixed `seed`, each row's completion
            depends only on its prompt, images and the parameters, not on its batch neighbours.
        min_batch_size, max_batch_size: for Beam's BatchElements.
        large_model: load the model once per machine and share it across worker processes.
        model_copies: with it, exactly this many copies per machine, shared as with large_model.
    """

    def __init__(self, model_path, generation=None, min_batch_size=None, max_batch_size=None, large_model=False,
                 model_copies=None, log_every_s=30.0):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self.model_path, self.large_model, self.copies = model_path, large_model, model_copies
        self.model_version = model_version(model_path)
        self.generation = dict(generation or {})
        self.log_every_s = log_every_s
        self._progress = None

    def load_model(self):
        start = time.perf_counter()
        model = SavedModelGenerator(self.model_path)
        logger.info("batch-infer: loaded %s in %.1f s", self.model_path, time.perf_counter() - start)
        return model

    def run_inference(self, batch, model, inference_args=None):
        parameters = {**self.generation, **(inference_args or {})}
        count("batches")
        for example, inference in zip(batch, self._generate(list(batch), model, parameters)):
            yield PredictionResult(example, inference, self.model_version)
        self._log_progress(len(batch))

    def _generate(self, examples, model, parameters):
        """One call for the batch; when the model refuses it, the row it names goes out with the
        reason and the rest is run again (each row alone when no row is named)."""
        outputs, pending = [None] * len(examples), list(range(len(examples)))
        while pending:
            rows = [examples[i] for i in pending]
            width = max(len(row["images"]) for row in rows)
            images = [list(row["images"]) + [b""] * (width - len(row["images"])) for row in rows] if width else None
            result = model.generate([row["prompt"] for row in rows], images, parameters)
            count("model_calls")
            if "error" not in result:
                for i, completion, num_tokens in zip(pending, result["completion"], result["num_tokens"]):
                    outputs[i] = {"completion": completion, "num_tokens": num_tokens}
                break
            refusal = model_refusal(result["error"])
            if refusal.code == "invalid_parameter":  # the flags are wrong for every row: stop the job
                raise ValueError(f"The model refuses the generation flags {parameters}: {refusal.message}")
            named = refusal.field in ROW_FIELDS and refusal.row is not None and refusal.row < len(pending)
            if len(pending) == 1 or named:
                row = 0 if len(pending) == 1 else refusal.row
                outputs[pending.pop(row)] = {"reason": refusal.reason, "reason_code": refusal.code}
            else:
                for i in pending:
                    outputs[i] = self._generate([examples[i]], model, parameters)[0]
                break
        return outputs

    def _log_progress(self, rows):
        now = time.perf_counter()
        if self._progress is None:
            self._progress = {"start": now, "rows": 0, "logged": now}
        self._progress["rows"] += rows
        if now - self._progress["logged"] >= self.log_every_s:
            done, elapsed = self._progress["rows"], now - self._progress["start"]
            logger.info("batch-infer: %d rows in %.0f s (%.2f rows/s in this worker)", done, elapsed,
                        done / max(elapsed, 1e-9))
            self._progress["logged"] = now

    def get_num_bytes(self, batch):
        return sum(len(row["prompt"].encode("utf-8")) + sum(map(len, row["images"])) for row in batch)

    def share_model_across_processes(self):
        """One model per machine, in a process of its own that the workers call, instead of one per process."""
        return self.large_model or self.copies is not None

    def model_copies(self):
        return self.copies or 1


def model_version(model_path):
    """The version of `BASE/NAME/N`: N."""
    return posixpath.basename(model_path.rstrip("/"))


class SplitResults(beam.DoFn):
    """(id, PredictionResult) -> a prediction record, or an `errors` record with the model's reason."""

    def process(self, element):
        row_id, result = element
        example, inference = result.example, result.inference
        if "reason" in inference:
            yield error_record(inference["reason_code"], inference["reason"], id=row_id, prompt=example["prompt"],
                               images=example["image_paths"], model_version=result.model_id, **example["line"].fields())
            return
        count("predictions_written")
        yield {"id": row_id, "prompt": example["prompt"], "completion": inference["completion"],
               "num_tokens": inference["num_tokens"], "model_version": result.model_id}


# --- the job ---------------------------------------------------------------------------------
def build_parser():
    parser = argparse.ArgumentParser(
        prog="gemma3-tf batch-infer", description="Prompts -> completions with an exported gemma3-tf SavedModel "
        "(Apache Beam RunInference; other flags are Beam pipeline options such as --runner, --direct_num_workers).")
    parser.add_argument("--model_path", required=True, help="the SavedModel version directory BASE/NAME/N "
                        "(local or gs://)")
    parser.add_argument("--input", required=True, help="JSONL files or preprocess TFRecords, a file or glob")
    parser.add_argument("--input_format", choices=["jsonl", "tfrecord"], default=None,
                        help="default: tfrecord for names ending .tfrecord or .tfrecord.gz, else jsonl")
    parser.add_argument("--output_dir", required=True)
    for name, kind in GENERATION_FLAGS.items():
        parser.add_argument(f"--{name}", type=kind, default=None, help="default: the model's")
    parser.add_argument("--min_batch_size", type=int, default=1)
    parser.add_argument("--max_batch_size", type=int, default=16)
    parser.add_argument("--bucket_by_length", action=argparse.BooleanOptionalAction, default=True,
                        help="batch prompts of similar length together (default: on)")
    parser.add_argument("--length_buckets", type=int, nargs="+", default=list(LENGTH_BUCKETS),
                        help=f"the length buckets' boundaries, in prompt bytes (an image counts {IMAGE_LENGTH}); "
                        "default: %(default)s")
    parser.add_argument("--large_model", action="store_true",
                        help="load the model once per machine, shared by its worker processes")
    parser.add_argument("--model_copies", type=int, default=None,
                        help="exactly this many model copies per machine (shared across processes)")
    return parser


def input_format(args):
    if args.input_format:
        return args.input_format
    return "tfrecord" if args.input.endswith(TFRECORD_SUFFIXES) else "jsonl"


def generation_parameters(args):
    return {name: getattr(args, name) for name in GENERATION_FLAGS if getattr(args, name) is not None}


def check_args(args):
    if args.min_batch_size < 1 or args.max_batch_size < args.min_batch_size:
        raise SystemExit(f"error: need 1 <= --min_batch_size <= --max_batch_size, got {args.min_batch_size} and "
                         f"{args.max_batch_size}")
    if args.length_buckets[0] < 1 or args.length_buckets != sorted(set(args.length_buckets)):
        raise SystemExit(f"error: --length_buckets must be increasing positive byte counts, got {args.length_buckets}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise SystemExit(f"error: --max_new_tokens must be at least 1, got {args.max_new_tokens}")
    if not FileSystems.exists(FileSystems.join(args.model_path, "saved_model.pb")):
        raise SystemExit(f"error: no saved_model.pb in {args.model_path}; --model_path is a version directory "
                         "BASE/NAME/N of `gemma3-tf export`")
    limits_file = FileSystems.join(args.model_path, "assets.extra", "limits.json")  # gemma3_tf.request_limits
    if FileSystems.exists(limits_file):
        with FileSystems.open(limits_file) as file:
            max_rows = json.load(file)["max_rows"]
        if args.max_batch_size > max_rows:
            raise SystemExit(f"error: --max_batch_size {args.max_batch_size} is over the export's max_rows={max_rows} "
                             "(its assets.extra/limits.json): every batch that large would be refused")


def tfrecord_schema(args):
    """The schema beside the TFRecords, checked against the export's tokenizer."""
    from gemma3_tf.data import Schema, tokenizer_fingerprint

    try:
        schema = Schema.for_pattern(args.input)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}")
    fingerprint = tokenizer_fingerprint(export_tokenizer(args.model_path))
    if fingerprint != schema.tokenizer_fingerprint:
        raise SystemExit(f"error: the TFRecords were made with another tokenizer (fingerprint "
                         f"{schema.tokenizer_fingerprint}) than {args.model_path}'s ({fingerprint})")
    return schema


def build_pipeline(pipeline, args, schema=None):
    """Reads, runs the model, writes; returns the (predictions, errors) PCollections of records."""
    if input_format(args) == "tfrecord":
        rows = (pipeline | "ReadTFRecords" >> ReadRecords(args.input)
                | "DecodeExamples" >> beam.ParDo(ReadTFRecordRow(schema, args.model_path)).with_outputs(
                    ERRORS, main="rows"))
    else:
        rows = (pipeline | "ReadJsonl" >> ReadLines(args.input)
                | "ParseRows" >> beam.ParDo(ReadJsonlRow()).with_outputs(ERRORS, main="rows"))
    repeated = first_of_each_id(rows.rows, lambda row: row["line"])
    unique = rows.rows | "DropRepeatedIds" >> beam.ParDo(DropRepeatedIds(), repeated).with_outputs(
        ERRORS, main="rows")
    handler = KeyedModelHandler(Gemma3SavedModelHandler(
        args.model_path, generation_parameters(args), args.min_batch_size, args.max_batch_size,
        large_model=args.large_model, model_copies=args.model_copies))
    to_run = unique.rows
    if args.bucket_by_length:
        to_run = to_run | "BatchByLength" >> BatchByLength(args.length_buckets)
    results = (to_run | "RunInference" >> RunInference(handler)
               | "SplitResults" >> beam.ParDo(SplitResults()).with_outputs(ERRORS, main="predictions"))
    errors = (rows[ERRORS], unique[ERRORS], results[ERRORS]) | "AllErrors" >> beam.Flatten()
    for name, records in (("predictions", results.predictions), (ERRORS, errors)):
        _ = (records | f"{name.capitalize()}ToJson" >> beam.Map(json.dumps, ensure_ascii=False)
             | f"Write{name.capitalize()}" >> beam.io.WriteToText(FileSystems.join(args.output_dir, name),
                                                                  file_name_suffix=".jsonl"))
    return results.predictions, errors


def counters(result):
    """The job's counters in NAMESPACE: {"rows_read", "predictions_written", "errors": {code: n}, ...}."""
    values = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        name = counter.key.metric.name
        values[name] = values.get(name, 0) + (counter.committed if counter.committed is not None else counter.attempted)
    errors = {name[len("errors_"):]: value for name, value in sorted(values.items()) if name.startswith("errors_")}
    summary = {name: value for name, value in values.items() if not name.startswith("errors_")}
    return {"rows_read": 0, "predictions_written": 0, **summary, "errors": errors}


def main(argv=None):
    args, beam_args = build_parser().parse_known_args(argv)
    check_args(args)
    schema = tfrecord_schema(args) if input_format(args) == "tfrecord" else None
    if not logger.handlers:  # progress on the terminal; on Dataflow workers it goes to the job's logs
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.info("batch-infer: %s (%s) with %s version %s, batches of %d-%d %s, generation %s", args.input,
                input_format(args), args.model_path, model_version(args.model_path), args.min_batch_size,
                args.max_batch_size, "by length" if args.bucket_by_length else "as rows come",
                generation_parameters(args) or "the model's defaults")
    if not FileSystems.exists(args.output_dir):
        FileSystems.mkdirs(args.output_dir)
    start = time.perf_counter()
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args, save_main_session=False))
    build_pipeline(pipeline, args, schema)
    result = pipeline.run()
    result.wait_until_finish()
    summary = counters(result)
    errors = sum(summary["errors"].values())
    reasons = f" {summary['errors']}" if errors else ""
    print(f"gemma3-tf batch-infer: {summary['rows_read']} rows read, {summary['predictions_written']} predictions "
          f"and {errors} errors{reasons} written to {args.output_dir} in {time.perf_counter() - start:.1f} s")
    return summary


if __name__ == "__main__":
    # Through the module's own name, so that workers import its classes rather than unpickle copies of __main__.
    from pipelines import batch_inference

    batch_inference.main()
