"""The Beam preprocessing pipeline on the DirectRunner, and `gemma3_tf.data`'s reader of its output.

The tests make their own image-text rows: PIL images, captions, and broken rows of every kind.
"""

import glob
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import gemma3_tf
from gemma3_tf import data
from keras_hub_oracle import TEXT_CONFIG, VISION_CONFIG, randomize
from pipelines import preprocess

SEQUENCE_LENGTH = 128
IMAGE_SIZE = VISION_CONFIG["image_size"]  # 28: 4 image tokens per image


@pytest.fixture(scope="module")
def vision_preset(tmp_path_factory, tiny_proto):
    """A tiny vision Gemma 3 with the tiny tokenizer, as a keras-hub preset directory."""
    backbone = gemma3_tf.Gemma3Backbone(**dict(TEXT_CONFIG, vocabulary_size=400),
                                        vision_encoder=gemma3_tf.Gemma3VisionEncoder(**VISION_CONFIG))
    randomize(backbone)
    preprocessor = gemma3_tf.Gemma3CausalLMPreprocessor(
        gemma3_tf.Gemma3Tokenizer(tiny_proto), gemma3_tf.Gemma3ImageConverter(IMAGE_SIZE),
        sequence_length=SEQUENCE_LENGTH, num_vision_tokens_per_image=4)
    causal_lm = gemma3_tf.Gemma3CausalLM(backbone, preprocessor)
    path = str(tmp_path_factory.mktemp("preset"))
    causal_lm.save_to_preset(path)
    return path, causal_lm


def write_image(path, width, height, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


GOOD = {  # id -> (prompt, response, number of images)
    "caption-0": ("<start_of_image> Describe the image.", "A red square.", 1),
    "caption-1": ("Describe", "A blue circle on a white field.", 1),  # images go in front
    "two-images": ("Compare <start_of_image> and <start_of_image>.", "The first is darker.", 2),
    "text-only": ("What is two plus two?", "Four.", 0),
    "long-response": ("Say it many times.", "again " * 80, 0),  # cut at the sequence length
}
BAD = {  # id -> expected reason code
    "missing-image": "image_missing",
    "corrupt-image": "image_unreadable",
    "empty-prompt": "empty_prompt",
    "no-response": "empty_response",
    "three-images": "too_many_images",
    "mismatch": "image_count_mismatch",
    "too-long": "too_long",
    "huge-image": "image_too_large",
}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """A JSONL manifest with images beside it (relative paths), good rows and broken ones."""
    root = tmp_path_factory.mktemp("rows")
    os.makedirs(root / "images")
    for index, (width, height) in enumerate([(40, 30), (28, 28), (50, 20), (64, 64)]):
        write_image(root / "images" / f"{index}.png", width, height, index)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / "images" / "4.jpg", quality=90)
    (root / "images" / "corrupt.png").write_bytes(b"\x89PNG not really")
    small = (root / "images" / "0.png").read_bytes()  # its header patched to claim 10000 x 10000 pixels
    (root / "images" / "huge.png").write_bytes(small[:16] + (10_000).to_bytes(4, "big") * 2 + small[24:])
    rows = [
        {"id": "caption-0", "prompt": GOOD["caption-0"][0], "response": GOOD["caption-0"][1],
         "images": ["images/0.png"]},
        {"id": "caption-1", "prompt": GOOD["caption-1"][0], "response": GOOD["caption-1"][1],
         "images": [str(root / "images" / "4.jpg")]},  # absolute path
        {"id": "two-images", "prompt": GOOD["two-images"][0], "response": GOOD["two-images"][1],
         "images": ["images/1.png", "images/2.png"]},
        {"id": "text-only", "prompt": GOOD["text-only"][0], "response": GOOD["text-only"][1]},
        {"id": "missing-image", "prompt": "<start_of_image> x", "response": "y", "images": ["images/nope.png"]},
        {"id": "corrupt-image", "prompt": "<start_of_image> x", "response": "y", "images": ["images/corrupt.png"]},
        {"id": "empty-prompt", "prompt": "  ", "response": "y"},
        {"id": "no-response", "prompt": "x"},
        {"id": "three-images", "prompt": "a", "response": "b", "images": ["images/0.png"] * 3},
        {"id": "mismatch", "prompt": "<start_of_image> a <start_of_image>", "response": "b",
         "images": ["images/0.png"]},
        {"id": "long-response", "prompt": GOOD["long-response"][0], "response": GOOD["long-response"][1]},
        {"id": "too-long", "prompt": "word " * 200, "response": "b"},
        {"id": "huge-image", "prompt": "x", "response": "y", "images": ["images/huge.png"]},
    ]
    lines = [json.dumps(row).encode() for row in rows] + [b"{not json", b"[1, 2]", NOT_UTF8]
    (root / "rows.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return str(root / "rows.jsonl"), len(lines)


NOT_UTF8 = b'{"id": "latin-1", "prompt": "caf\xe9", "response": "x"}'  # Latin-1, as old exports write


def run(manifest_path, preset_path, output_dir, *extra):
    return preprocess.main(["--input", manifest_path, "--output_dir", str(output_dir), "--preset", preset_path,
                            "--sequence_length", str(SEQUENCE_LENGTH), "--num_shards", "3",
                            "--image_format", "png", *extra])


@pytest.fixture(scope="module")
def output(tmp_path_factory, manifest, vision_preset):
    output_dir = tmp_path_factory.mktemp("tfrecords")
    counts = run(manifest[0], vision_preset[0], output_dir)
    return output_dir, counts


def shard_bytes(directory):
    return {os.path.basename(path): open(path, "rb").read() for path in sorted(glob.glob(f"{directory}/*.tfrecord"))}


def rejected_rows(directory):
    rows = []
    for path in glob.glob(f"{directory}/rejected-*.jsonl"):
        rows += [json.loads(line) for line in open(path)]
    return rows


def test_every_row_is_written_or_rejected_with_its_reason(output, manifest):
    output_dir, counts = output
    rejected = rejected_rows(output_dir)
    assert counts["read"] == manifest[1] == counts["written"] + len(rejected)
    assert counts["written"] == len(GOOD)
    unparsed = ("bad_json", "not_utf8")
    by_id = {row["row"] if row["reason_code"] in unparsed else json.loads(row["row"]).get("id"): row
             for row in rejected}
    assert {key: by_id[key]["reason_code"] for key in BAD} == BAD
    assert sorted(row["reason_code"] for row in rejected if row["reason_code"] == "bad_json") == ["bad_json"] * 2
    # The bytes that are not UTF-8 reject their row, shown escaped, and the job goes on.
    not_utf8 = by_id[NOT_UTF8.decode("latin-1").replace("\xe9", "\\xe9")]
    assert not_utf8["reason"].startswith("the line is not UTF-8")
    # Each rejected row says where it is: file, line number, byte offset of its start.
    lines = open(manifest[0], "rb").read().split(b"\n")[:-1]
    assert (not_utf8["source"], not_utf8["line"], not_utf8["offset"]) == (
        manifest[0], len(lines), sum(len(line) + 1 for line in lines[:-1]))
    assert by_id["too-long"]["line"] == 12 and counts["repeated_ids"] == 0
    assert "images/nope.png" in by_id["missing-image"]["reason"]
    assert "--sequence_length=128" in by_id["too-long"]["reason"]
    assert counts["rejected"] == {code: list(BAD.values()).count(code) + 2 * (code == "bad_json")
                                  + (code == "not_utf8") for code in set(BAD.values()) | set(unparsed)}
    assert len(glob.glob(f"{output_dir}/train-*-of-00003.tfrecord")) == 3
    schema = data.Schema.load(str(output_dir))
    assert (schema.sequence_length, schema.image_size, schema.num_vision_tokens_per_image) == (128, 28, 4)


def test_examples_hold_what_the_schema_promises(output, vision_preset):
    output_dir, _ = output
    causal_lm = vision_preset[1]
    tokenizer = causal_lm.preprocessor.tokenizer
    schema = data.Schema.load(str(output_dir))
    assert schema.tokenizer_fingerprint == data.tokenizer_fingerprint(tokenizer)
    records = tf.data.TFRecordDataset(sorted(glob.glob(f"{output_dir}/*.tfrecord")))
    seen = set()
    for record in records:
        example_id = tf.io.parse_single_example(record, {"id": tf.io.FixedLenFeature([], tf.string)})["id"]
        example_id = example_id.numpy().decode()
        features = data.parse_example(record, schema)
        prompt, response, num_images = GOOD[example_id]
        token_ids = features["token_ids"].numpy()
        placeholders = np.flatnonzero(token_ids == tokenizer.image_placeholder_id)
        assert len(placeholders) == 4 * num_images
        indices = features["vision_indices"].numpy()
        np.testing.assert_array_equal(indices[: len(placeholders)], placeholders)
        assert (indices[len(placeholders):] == 0).all()
        np.testing.assert_array_equal(features["vision_mask"].numpy(), token_ids == tokenizer.image_placeholder_id)
        # The loss covers exactly the response, its <end_of_turn> and EOS.
        expected = tokenizer(response + "<end_of_turn>").numpy().tolist() + [tokenizer.end_token_id]
        trained = token_ids[features["loss_mask"].numpy() == 1].tolist()
        assert trained == expected[: len(trained)]
        assert (len(trained) < len(expected)) == (example_id == "long-response")
        if example_id == "long-response":  # the response's tail was cut: the example is full
            assert features["padding_mask"].numpy().all() and len(trained) > 10
        assert features["images"].shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
        assert float(tf.reduce_max(tf.abs(features["images"]))) <= 1.0
        if num_images:
            assert float(tf.reduce_max(tf.abs(features["images"][num_images - 1]))) > 0
        assert float(tf.reduce_max(tf.abs(features["images"][num_images:]))) == 0 if num_images < 2 else True
        seen.add(example_id)
    assert seen == set(GOOD)


def test_stored_image_is_the_converters_resize_of_the_source(output, manifest):
    output_dir, _ = output
    schema = data.Schema.load(str(output_dir))
    source = open(os.path.join(os.path.dirname(manifest[0]), "images", "0.png"), "rb").read()
    expected = gemma3_tf.Gemma3ImageConverter(IMAGE_SIZE)(source)
    for record in tf.data.TFRecordDataset(sorted(glob.glob(f"{output_dir}/*.tfrecord"))):
        features = data.parse_example(record, schema)
        if tf.io.parse_single_example(record, {"id": tf.io.FixedLenFeature([], tf.string)})["id"] == b"caption-0":
            # PNG keeps the resized pixels exactly, up to rounding to uint8.
            np.testing.assert_allclose(features["images"][0], expected, atol=0.5 / 127.5 + 1e-6)
            return
    pytest.fail("caption-0 not found")


def test_reader_batches_feed_the_model(output, vision_preset):
    output_dir, _ = output
    causal_lm = vision_preset[1]
    dataset = data.load_tfrecord_dataset(f"{output_dir}/train-*.tfrecord", batch_size=2, seed=0)
    inputs, labels, weights = next(iter(dataset))
    assert inputs["token_ids"].shape == (2, SEQUENCE_LENGTH) and inputs["images"].shape == (2, 2, 28, 28, 3)
    assert labels.shape == weights.shape == (2, SEQUENCE_LENGTH)
    logits = causal_lm(inputs)
    loss = keras_loss(labels, logits, weights)
    assert np.isfinite(loss) and loss > 0
    assert len(list(dataset)) == len(GOOD) // 2  # 5 examples, drop_remainder: static batch shapes


def keras_loss(labels, logits, weights):
    import keras

    return float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits, sample_weight=weights))


def test_output_is_byte_identical_across_runs_and_worker_processes(output, manifest, vision_preset, tmp_path):
    first_dir, _ = output
    run(manifest[0], vision_preset[0], tmp_path / "again", "--direct_num_workers", "2",
        "--direct_running_mode", "multi_processing")
    first, again = shard_bytes(first_dir), shard_bytes(tmp_path / "again")
    assert first == again and sum(len(value) for value in first.values()) > 0
    assert open(f"{first_dir}/schema.json").read() == open(tmp_path / "again" / "schema.json").read()


def test_bad_flags_are_named(manifest, vision_preset, tmp_path):
    with pytest.raises(SystemExit, match="--num_shards must be at least 1"):
        run(manifest[0], vision_preset[0], tmp_path / "x", "--num_shards", "0")
    with pytest.raises(FileNotFoundError, match="No TFRecord files match"):
        data.load_tfrecord_dataset(str(tmp_path / "nothing-*.tfrecord"), 2)


def test_tfds_dataset_source(tmp_path, manifest, vision_preset):
    import tensorflow_datasets as tfds

    image = open(os.path.join(os.path.dirname(manifest[0]), "images", "0.png"), "rb").read()
    rows = [{"caption": "A red square.", "question": "<start_of_image> Describe.", "image": image},
            {"caption": "", "question": "<start_of_image> Describe.", "image": image}]  # rejected: empty response
    features = tfds.features.FeaturesDict({"caption": tfds.features.Text(), "question": tfds.features.Text(),
                                           "image": tfds.features.Image(encoding_format="png")})
    tfds.dataset_builders.store_as_tfds_dataset(
        name="captions", version="1.0.0", features=features, data_dir=str(tmp_path / "tfds"),
        split_datasets={"train": [(str(key), {**row, "image": np.asarray(Image.open(io.BytesIO(row["image"])))})
                                  for key, row in enumerate(rows)]})
    counts = preprocess.main(["--tfds", "captions/train", "--tfds_data_dir", str(tmp_path / "tfds"),
                              "--prompt_field", "question", "--response_field", "caption", "--image_field", "image",
                              "--output_dir", str(tmp_path / "out"), "--preset", vision_preset[0],
                              "--sequence_length", str(SEQUENCE_LENGTH), "--num_shards", "1"])
    assert (counts["read"], counts["written"], counts["rejected"]) == (2, 1, {"empty_response": 1})
    schema = data.Schema.load(str(tmp_path / "out"))
    record = next(iter(tf.data.TFRecordDataset(str(tmp_path / "out" / "train-00000-of-00001.tfrecord"))))
    features = data.parse_example(record, schema)
    assert int(features["vision_mask"].numpy().sum()) == 4
    assert float(tf.reduce_max(tf.abs(features["images"][0]))) > 0


def test_gzip_shards_are_deterministic_and_readable(manifest, vision_preset, tmp_path):
    for name in ("one", "two"):
        run(manifest[0], vision_preset[0], tmp_path / name, "--compression", "gzip")
    one, two = (sorted(glob.glob(f"{tmp_path / name}/*.tfrecord.gz")) for name in ("one", "two"))
    assert len(one) == 3 and [open(path, "rb").read() for path in one] == [open(path, "rb").read() for path in two]
    batches = data.load_tfrecord_dataset(f"{tmp_path / 'one'}/train-*.tfrecord.gz", 1, shuffle=False)
    assert len(list(batches)) == len(GOOD)


def test_an_unexpected_error_in_one_row_is_rejected_not_fatal(manifest, vision_preset, tmp_path, monkeypatch):
    prepare = preprocess.PrepareExample.prepare

    def failing_on_one_row(self, row):
        if row["id"] == "text-only":
            raise RuntimeError("boom")
        return prepare(self, row)

    monkeypatch.setattr(preprocess.PrepareExample, "prepare", failing_on_one_row)
    counts = run(manifest[0], vision_preset[0], tmp_path)
    assert counts["rejected"]["error"] == 1 and counts["written"] == len(GOOD) - 1
    assert counts["read"] == counts["written"] + sum(counts["rejected"].values())
    assert any(row["reason"] == "RuntimeError: boom" for row in rejected_rows(tmp_path))
