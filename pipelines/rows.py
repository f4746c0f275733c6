"""What both Beam jobs read: JSONL rows with image locations, and the bytes at those locations.

Kept free of gemma3_tf imports, so that batch-inference workers run the SavedModel alone.
"""

import hashlib
import json
import posixpath
import urllib.request
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems


class Rejected(Exception):
    """A row that cannot be used; `code` names the reason for counters, `row_id` is set once known."""

    def __init__(self, code, message, row_id=None):
        super().__init__(message)
        self.code, self.row_id = code, row_id


class Line(NamedTuple):
    """Where a line is: its file, its number (from 1) and the byte offset of its start (in the decompressed
    text of a .gz file), for the error records that point a user at it."""

    source: str
    number: int
    offset: int | None = None  # None for a TFRecord

    def fields(self):
        return {"source": self.source, "line": self.number, **({} if self.offset is None else {"offset": self.offset})}


class _LinesOfFile(beam.DoFn):
    """A file -> (Line, bytes) for each of its lines."""

    def process(self, readable_file):
        path, offset, number = readable_file.metadata.path, 0, 0
        with readable_file.open() as file:  # streamed: one line in memory at a time
            while line := file.readline():
                number += 1
                yield Line(path, number, offset), line.rstrip(b"\n").rstrip(b"\r")
                offset += len(line)


class _RecordsOfFile(beam.DoFn):
    """A TFRecord file -> (Line, serialized record) for each of its records."""

    def process(self, readable_file):
        import tensorflow as tf

        path = readable_file.metadata.path
        records = tf.data.TFRecordDataset(path, compression_type="GZIP" if path.endswith(".gz") else "")
        for number, record in enumerate(records.as_numpy_iterator(), 1):
            yield Line(path, number), record


class ReadLines(beam.PTransform):
    """(Line, bytes) for each line of the files matching `pattern` (any Beam filesystem, compression by
    extension). Bytes: decoding them per row (`parse_jsonl_row`) makes bytes that are not UTF-8 a rejected
    row, where Beam's text coder fails the whole job with UnicodeDecodeError. Each file is read by one worker,
    which knows every line's number and offset (Beam's ReadFromText splits a file but tells neither); the
    reshuffle then spreads its lines over the workers for the costly steps after."""

    reader = _LinesOfFile

    def __init__(self, pattern):
        super().__init__()
        self.pattern = pattern

    def expand(self, pbegin):
        return (pbegin | "Match" >> fileio.MatchFiles(self.pattern) | "Open" >> fileio.ReadMatches()
                | "Read" >> beam.ParDo(self.reader()) | "Spread" >> beam.Reshuffle())


class ReadRecords(ReadLines):
    """(Line, serialized record) for each record of the TFRecord files matching `pattern` (`Line.number`
    is the record's number in its file), read through TensorFlow's filesystems as a trainer reads them."""

    reader = _RecordsOfFile


def first_of_each_id(keyed_rows, order):
    """{id: (copies, the least `order(row)`)} for each id that `keyed_rows` ((id, row) pairs) holds more than
    once, as a side input: a row of such an id whose order is not the least is a repeat. Only ids and order
    keys are shuffled, never the rows (images included)."""

    def merge(values):  # associative, as Beam's combiner lifting needs: it merges partial results too
        values = list(values)
        return sum(copies for copies, _ in values), min(key for _, key in values)

    return beam.pvalue.AsDict(
        keyed_rows | "OrderKeys" >> beam.Map(lambda pair: (pair[0], (1, order(pair[1]))))
        | "CountIds" >> beam.CombinePerKey(merge) | "Repeated" >> beam.Filter(lambda pair: pair[1][0] > 1))


def line_text(line):
    """A line as text for an error record: bytes that are not UTF-8 as backslash escapes."""
    return line.decode("utf-8", errors="backslashreplace") if isinstance(line, bytes) else line


def parse_jsonl_row(source, line):
    """A line (bytes or text) of the JSONL file `source` -> its object with a string `id` (the line's hash
    when it has none) and `images` as absolute locations (paths relative to `source` resolved)."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise Rejected("not_utf8", f"the line is not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise Rejected("bad_json", f"not valid JSON: {error}") from error
    if not isinstance(row, dict):
        raise Rejected("bad_json", f"a row must be a JSON object, got {type(row).__name__}")
    row_id = row.get("id")
    if row_id is None or row_id == "":  # stable without an id: the line's own hash
        row_id = "sha1:" + hashlib.sha1(line.encode("utf-8")).hexdigest()[:20]
    row_id = str(row_id)
    images = row.get("images") or []
    if not isinstance(images, list) or not all(isinstance(image, str) and image for image in images):
        raise Rejected("bad_images_field", "`images` must be a list of paths or URLs", row_id)
    base = posixpath.dirname(source)
    images = [image if "://" in image or image.startswith("/") else posixpath.join(base, image) for image in images]
    return {**row, "id": row_id, "images": images}


def read_image(location):
    """The bytes at a local path, `gs://` (any Beam filesystem) or http(s) URL."""
    try:
        if location.startswith(("http://", "https://")):
            with urllib.request.urlopen(location, timeout=60) as response:
                return response.read()
        with FileSystems.open(location) as file:
            return file.read()
    except Exception as error:  # missing file, permission, network: the row is rejected, the job goes on
        raise Rejected("image_missing", f"cannot read image {location}: {error}") from error
