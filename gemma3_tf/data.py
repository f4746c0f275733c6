"""The one TFRecord schema of gemma3-tf training data, and its `tf.data` reader.

`pipelines/preprocess.py` writes it, training reads it. Each record is a `tf.train.Example`:

    token_ids       int64 [T]    BOS, prompt (image blocks expanded), response, EOS, then pad (0)
    padding_mask    int64 [T]    1 on real tokens
    loss_mask       int64 [T]    1 on response tokens (EOS included): the tokens that are trained
    vision_mask     int64 [T]    1 on image placeholder tokens
    vision_indices  int64 [N*V]  their positions, zero-padded (N = max_images_per_prompt,
                                 V = num_vision_tokens_per_image)
    images          bytes [0..N] the row's images, resized to image_size x image_size once and
                                 encoded (PNG or JPEG), in prompt order
    id              bytes [1]

Beside the shards, `schema.json` holds a `Schema`: the shapes above, the tokenizer's fingerprint
and the row counts. The reader checks the records against it.
"""

import dataclasses
import hashlib
import json
import os

import tensorflow as tf

from gemma3_tf.preprocessing import Gemma3ImageConverter, training_targets

SCHEMA_VERSION = 1
SCHEMA_FILE = "schema.json"
SEQUENCE_FEATURES = ("token_ids", "padding_mask", "loss_mask", "vision_mask")


@dataclasses.dataclass(frozen=True)
class Schema:
    """What a directory of training TFRecords holds; written as `schema.json` beside the shards."""

    sequence_length: int
    image_size: int
    max_images_per_prompt: int
    num_vision_tokens_per_image: int
    tokenizer_fingerprint: str
    chat_template: bool = True
    image_format: str = "jpeg"
    compression: str = ""  # "" or "GZIP"
    counts: dict = dataclasses.field(default_factory=dict)  # read, written, rejected by reason
    version: int = SCHEMA_VERSION

    @property
    def num_vision_tokens(self):
        return self.max_images_per_prompt * self.num_vision_tokens_per_image

    def feature_spec(self):
        """The `tf.io.parse_single_example` spec of a record."""
        spec = {name: tf.io.FixedLenFeature([self.sequence_length], tf.int64) for name in SEQUENCE_FEATURES}
        spec["vision_indices"] = tf.io.FixedLenFeature([self.num_vision_tokens], tf.int64)
        spec["images"] = tf.io.VarLenFeature(tf.string)
        spec["id"] = tf.io.FixedLenFeature([], tf.string)
        return spec

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text):
        values = json.loads(text)
        if values.get("version") != SCHEMA_VERSION:
            raise ValueError(f"{SCHEMA_FILE} has version {values.get('version')}; this gemma3-tf reads "
                             f"version {SCHEMA_VERSION}.")
        return cls(**values)

    @classmethod
    def for_pattern(cls, pattern):
        """The schema beside the shards matching `pattern`."""
        files = tf.io.gfile.glob(pattern)
        if not files:
            raise FileNotFoundError(f"No TFRecord files match {pattern!r}.")
        return cls.load(os.path.dirname(sorted(files)[0]))

    @classmethod
    def load(cls, directory):
        path = os.path.join(directory, SCHEMA_FILE)
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"No {SCHEMA_FILE} in {directory}: is this the output of "
                                    "`gemma3-tf preprocess` (it is written when the job ends)?")
        with tf.io.gfile.GFile(path) as file:
            return cls.from_json(file.read())


def tokenizer_fingerprint(tokenizer):
    """A short hash of the tokenizer's SentencePiece model: data and model must agree on it."""
    return hashlib.sha256(tokenizer.proto).hexdigest()[:16]


def serialize_example(features, images, example_id):
    """One row of training features ([T] / [N*V] int arrays), its encoded images and id -> bytes."""
    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    feature = {name: ints(features[name]) for name in (*SEQUENCE_FEATURES, "vision_indices")}
    feature["images"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=list(images)))
    feature["id"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[example_id.encode("utf-8")]))
    # deterministic: protobuf map order otherwise differs between processes
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def parse_example(record, schema, with_images=True):
    """A serialized record -> training features (int32), with images decoded to float32
    [max_images_per_prompt, S, S, 3] in [-1, 1] (zeros where a row has fewer)."""
    parsed = tf.io.parse_single_example(record, schema.feature_spec())
    features = {name: tf.cast(parsed[name], tf.int32) for name in (*SEQUENCE_FEATURES, "vision_indices")}
    if not with_images:
        return {key: value for key, value in features.items() if key not in ("vision_mask", "vision_indices")}
    converter = Gemma3ImageConverter(schema.image_size)
    encoded = tf.sparse.to_dense(parsed["images"], default_value="")
    size, count = schema.image_size, schema.max_images_per_prompt
    decoded = tf.map_fn(converter, encoded, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
    missing = count - tf.shape(decoded)[0]
    features["images"] = tf.ensure_shape(
        tf.concat([decoded, tf.zeros([missing, size, size, 3])], axis=0), [count, size, size, 3])
    return features


def _holds_no_image(record):
    images = tf.io.parse_single_example(record, {"images": tf.io.VarLenFeature(tf.string)})["images"]
    return tf.equal(tf.size(images.values), 0)


def load_tfrecord_dataset(pattern, batch_size, schema=None, shuffle=True, shuffle_buffer=1024, seed=None,
                          repeat=False, drop_remainder=True, with_images=None, cycle_length=4, skip_batches=0):
    """The training examples under `pattern` as a `tf.data.Dataset` of (inputs, labels, sample_weight).

    Args:
        pattern: a glob of the shards (local or `gs://`), e.g. `DIR/train-*.tfrecord`.
        batch_size: examples per batch; with `drop_remainder` every batch has this static size
            (what TPUs need).
        schema: the `Schema`; by default read from `schema.json` beside the shards.
        shuffle, shuffle_buffer, seed: shuffle the shard order and the examples.
        repeat: cycle through the data forever (for a step-counted training loop).
        with_images: include `images`, `vision_mask` and `vision_indices` in the inputs (default:
            when the schema has room for images); False for a text-only model, which then gets only
            the examples that hold no image (the others' image placeholder tokens mean nothing to it).
        skip_batches: start after this many batches (records are skipped before they are
            decoded). With a `seed`, the order is fixed, so this is how training resumes exactly.
    Returns: batches of ({"token_ids", "padding_mask"[, "images", "vision_mask",
        "vision_indices"]}, labels [B, T], sample_weight [B, T]), shapes static.
    """
    schema = schema or Schema.for_pattern(pattern)
    files = tf.io.gfile.glob(pattern)
    if not files:
        raise FileNotFoundError(f"No TFRecord files match {pattern!r}.")
    if with_images is None:
        with_images = schema.max_images_per_prompt > 0
    dataset = tf.data.Dataset.from_tensor_slices(sorted(files))
    if shuffle:
        dataset = dataset.shuffle(len(files), seed=seed)
    dataset = dataset.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=schema.compression),
        cycle_length=cycle_length, num_parallel_calls=tf.data.AUTOTUNE, deterministic=seed is not None or not shuffle)
    if not with_images and schema.max_images_per_prompt:
        dataset = dataset.filter(_holds_no_image)
        if repeat and not any(True for _ in dataset.take(1)):  # else the repeated filter would wait forever
            raise ValueError(f"Every example under {pattern!r} holds an image: nothing for a text-only model.")
    if repeat:
        dataset = dataset.repeat()
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    dataset = dataset.skip(skip_batches * batch_size)
    dataset = dataset.map(lambda record: training_targets(parse_example(record, schema, with_images)),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=seed is not None or not shuffle)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
