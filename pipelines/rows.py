"""What both Beam jobs read: JSONL rows with image locations, and the bytes at those locations.

Kept free of gemma3_tf imports, so that batch-inference workers run the SavedModel alone.
"""

import hashlib
import json
import posixpath
import urllib.request

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems


class Rejected(Exception):
    """A row that cannot be used; `code` names the reason for counters, `row_id` is set once known."""

    def __init__(self, code, message, row_id=None):
        super().__init__(message)
        self.code, self.row_id = code, row_id


def read_lines(pattern):
    """(file, line) pairs of the files matching `pattern`, each line as bytes: decoding them per row
    (`parse_jsonl_row`) makes bytes that are not UTF-8 a rejected row, where Beam's default text coder
    fails the whole job with UnicodeDecodeError."""
    return beam.io.ReadFromTextWithFilename(pattern, coder=beam.coders.BytesCoder())


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
