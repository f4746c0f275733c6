"""Batch inference (pipelines/batch_inference.py) on the DirectRunner with the tiny exports of conftest.py.

Every row read comes out once: as a prediction equal to calling the SavedModel directly (and, greedy,
to the in-process model), or as an error with its reason. The tests make their own prompt files.
"""

import bisect
import glob
import json
import os
import subprocess
import sys

import pytest

from gemma3_tf import cli
from gemma3_tf.preprocessing import chat_prompt, images_in_front
from gemma3_tf.refusals import graph_message
from pipelines import batch_inference, preprocess
from test_preprocessing import png
from tiny_exports import PROMPTS, in_process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_PROMPTS = {"hello": PROMPTS[0], "fox": PROMPTS[1], "gemma": "Gemma is a family of", "numbers": "Numbers 12345 and"}
TEXT_BAD = {  # id -> reason code
    "empty": "empty_prompt", "no-prompt": "missing_prompt", "missing-image": "image_missing",
    "too-long": "too_long", "image-on-text": "images_not_supported",
}
# Runs the job in a fresh interpreter: neither the driver nor the (in-process) workers may import gemma3_tf.
RUN_SCRIPT = """
import json, sys
from pipelines import batch_inference
summary = batch_inference.main(sys.argv[1:])
print(json.dumps({"summary": summary, "gemma3_tf": sorted(m for m in sys.modules if m.startswith("gemma3_tf"))}))
"""


def write_rows(path, rows, extra_lines=()):
    path.write_text("\n".join([json.dumps(row) for row in rows] + list(extra_lines)) + "\n")
    return len(rows) + len(extra_lines)


def outputs(output_dir):
    """(predictions by id, error records) from the job's sharded files."""
    def records(kind):
        found = sorted(glob.glob(os.path.join(output_dir, f"{kind}-*-of-*.jsonl")))
        assert found, f"no {kind} shards in {output_dir}"
        return [json.loads(line) for path in found for line in open(path, encoding="utf-8")]

    predictions = records("predictions")
    by_id = {record["id"]: record for record in predictions}
    assert len(by_id) == len(predictions)
    return by_id, records("errors")


def direct(loaded, prompt, images=None, **parameters):
    """One row through the SessionSavedModel's `generate`, alone: (completion, num_tokens)."""
    inputs = {"prompt": [prompt], **({"images": [images]} if images else {}), **parameters}
    result = loaded.generate(**inputs)
    return result["completion"][0].decode("utf-8", errors="replace"), int(result["num_tokens"][0])


@pytest.fixture(scope="module")
def text_rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompts")
    os.makedirs(root / "images")
    (root / "images" / "0.png").write_bytes(png(40, 30, 0)[0])
    rows = [{"id": key, "prompt": prompt} for key, prompt in TEXT_PROMPTS.items()] + [
        {"id": "empty", "prompt": "   "}, {"id": "no-prompt"},
        {"id": "missing-image", "prompt": "Describe", "images": ["images/nope.png"]},
        {"id": "too-long", "prompt": "word " * 60},  # the export's max_length is 48
        {"id": "image-on-text", "prompt": "Describe", "images": ["images/0.png"]}]
    count = write_rows(root / "rows.jsonl", rows, ["{not json"])
    with open(root / "rows.jsonl", "ab") as file:
        file.write(b'{"id": "latin-1", "prompt": "caf\xe9"}\n')  # not UTF-8: an error row, not a failed job
        file.write(b'{"id": "hello", "prompt": "a second row with the id hello"}\n')  # reported, not run
    return str(root / "rows.jsonl"), count + 2


@pytest.fixture(scope="module")
def greedy_run(tiny_text_savedmodel, text_rows, tmp_path_factory):
    """Greedy, fixed batches of 4 (good and bad rows share batches), in a fresh interpreter."""
    output_dir = str(tmp_path_factory.mktemp("greedy"))
    args = ["--model_path", tiny_text_savedmodel[1], "--input", text_rows[0], "--output_dir", output_dir,
            "--max_new_tokens", "6", "--min_batch_size", "4", "--max_batch_size", "4"]
    stdout = subprocess.run([sys.executable, "-c", RUN_SCRIPT, *args], cwd=REPO, check=True, capture_output=True,
                            text=True, timeout=300).stdout
    return output_dir, json.loads(stdout.strip().splitlines()[-1])


def test_every_row_comes_out_once_as_a_prediction_or_an_error_with_its_reason(greedy_run, text_rows):
    output_dir, run = greedy_run
    predictions, errors = outputs(output_dir)
    assert set(predictions) == set(TEXT_PROMPTS)
    assert len(predictions) + len(errors) == text_rows[1]
    by_id = {record["id"]: record for record in errors if "id" in record}
    assert {key: record["reason_code"] for key, record in by_id.items()} == {**TEXT_BAD, "hello": "duplicate_id"}
    assert predictions["hello"]["prompt"] == TEXT_PROMPTS["hello"]  # the first row of the id ran
    assert "only the first (" in by_id["hello"]["reason"] and by_id["hello"]["line"] == text_rows[1]
    bad_json, not_utf8 = sorted((record for record in errors if "id" not in record), key=lambda r: r["reason_code"])
    assert (bad_json["reason_code"], bad_json["row"]) == ("bad_json", "{not json")
    assert (not_utf8["reason_code"], not_utf8["row"]) == ("not_utf8", '{"id": "latin-1", "prompt": "caf\\xe9"}')
    # Every error row says where its row is: file, line number, byte offset of its start.
    lines = open(text_rows[0], "rb").read().split(b"\n")[:-1]
    assert (not_utf8["source"], not_utf8["line"]) == (text_rows[0], len(lines) - 1)
    assert not_utf8["offset"] == sum(len(line) + 1 for line in lines[:-2])
    assert all(record["source"] == text_rows[0] for record in errors)
    assert by_id["too-long"]["line"] == 8 and "offset" in by_id["too-long"]  # a row the model refused
    assert "images/nope.png" in by_id["missing-image"]["reason"]
    assert "max_length=48" in by_id["too-long"]["reason"] and by_id["too-long"]["reason"].startswith("`prompt` is")
    assert "no vision encoder" in by_id["image-on-text"]["reason"]
    summary = run["summary"]
    assert summary["rows_read"] == text_rows[1] and summary["predictions_written"] == len(TEXT_PROMPTS)
    assert summary["errors"] == {code: 1 for code in [*TEXT_BAD.values(), "bad_json", "not_utf8", "duplicate_id"]}
    assert summary["model_calls"] > summary["batches"]  # the refused batches ran again without their bad rows
    assert run["gemma3_tf"] == []  # the workers ran the SavedModel only


def test_greedy_predictions_equal_the_saved_model_and_the_in_process_model(greedy_run, tiny_text_savedmodel):
    causal_lm, _, loaded = tiny_text_savedmodel
    predictions, _ = outputs(greedy_run[0])
    for key, prompt in TEXT_PROMPTS.items():
        record = predictions[key]
        assert (record["completion"], record["num_tokens"]) == direct(loaded, prompt, max_new_tokens=6)
        assert (record["prompt"], record["model_version"]) == (prompt, "1")
    keys = list(TEXT_PROMPTS)
    expected = in_process(causal_lm, [TEXT_PROMPTS[key] for key in keys], 6)
    assert [predictions[key]["completion"] for key in keys] == expected


def test_sampling_with_a_seed_equals_direct_calls_row_by_row_on_two_worker_processes(tiny_text_savedmodel, text_rows,
                                                                                    tmp_path):
    _, path, loaded = tiny_text_savedmodel
    summary = batch_inference.main([
        "--model_path", path, "--input", text_rows[0], "--output_dir", str(tmp_path), "--max_new_tokens", "8",
        "--temperature", "1.5", "--top_k", "5", "--seed", "7", "--max_batch_size", "3",
        "--direct_num_workers", "2", "--direct_running_mode", "multi_processing", "--large_model"])
    predictions, errors = outputs(str(tmp_path))
    assert len(predictions) + len(errors) == text_rows[1] == summary["rows_read"]
    for key, prompt in TEXT_PROMPTS.items():
        expected = direct(loaded, prompt, max_new_tokens=8, temperature=1.5, top_k=5, seed=7)
        assert (predictions[key]["completion"], predictions[key]["num_tokens"]) == expected
    assert predictions["fox"]["completion"] != direct(loaded, PROMPTS[1], max_new_tokens=8)[0]  # it sampled


def test_vision_rows_equal_direct_calls_with_their_image_bytes(tiny_vision_savedmodel, tmp_path):
    _, path, loaded = tiny_vision_savedmodel
    images = {name: png(width, height, seed)[0] for name, width, height, seed in
              [("0.png", 40, 30, 0), ("1.png", 28, 28, 1)]}
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "corrupt.png").write_bytes(b"not an image at all")
    good = {"marker": ("<start_of_image> Describe", ["0.png"]),
            "in-front": ("Describe it", [str(tmp_path / "1.png")])}  # absolute path; the image goes in front
    rows = [{"id": key, "prompt": prompt, "images": paths} for key, (prompt, paths) in good.items()] + [
        {"id": "three-images", "prompt": "Compare", "images": ["0.png"] * 3},  # max_images_per_prompt is 2
        {"id": "corrupt", "prompt": "Describe", "images": ["corrupt.png"]}]
    count = write_rows(tmp_path / "rows.jsonl", rows)
    # One row a batch: each new batch shape costs this XLA export a compile of several seconds.
    summary = batch_inference.main(["--model_path", path, "--input", str(tmp_path / "rows.jsonl"), "--output_dir",
                                    str(tmp_path / "out"), "--max_new_tokens", "4", "--max_batch_size", "1"])
    predictions, errors = outputs(str(tmp_path / "out"))
    assert len(predictions) + len(errors) == count == summary["rows_read"]
    assert {record["id"]: record["reason_code"] for record in errors} == {
        "three-images": "too_many_images", "corrupt": "image_unreadable"}
    for key, (prompt, paths) in good.items():
        expected = direct(loaded, prompt, [images[os.path.basename(p)] for p in paths], max_new_tokens=4)
        assert (predictions[key]["completion"], predictions[key]["num_tokens"]) == expected


def test_tfrecords_of_the_preprocess_pipeline_give_their_prompts_to_the_model(tiny_text_savedmodel, tmp_path):
    _, path, loaded = tiny_text_savedmodel
    preset = os.path.join(os.path.dirname(os.path.dirname(path)), "preset")  # what tiny_exports exported
    rows = [{"id": key, "prompt": TEXT_PROMPTS[key], "response": "The quick brown fox."} for key in ("hello", "gemma")]
    write_rows(tmp_path / "train.jsonl", rows + rows[:1])  # a row twice: written twice, run once
    counts = preprocess.main(["--input", str(tmp_path / "train.jsonl"), "--output_dir", str(tmp_path / "records"),
                              "--preset", preset, "--sequence_length", "32", "--max_images_per_prompt", "0",
                              "--num_shards", "2"])
    assert (counts["written"], counts["repeated_ids"]) == (3, 1)
    assert cli.main(["batch-infer", "--model_path", path, "--input", str(tmp_path / "records" / "train-*.tfrecord"),
                     "--output_dir", str(tmp_path / "out"), "--max_new_tokens", "5"]) == 0
    predictions, errors = outputs(str(tmp_path / "out"))
    assert len(predictions) == 2 and [error["reason_code"] for error in errors] == ["duplicate_id"]
    assert errors[0]["id"] == "hello" and errors[0]["source"].endswith(".tfrecord") and errors[0]["line"] >= 2
    for row in rows:
        prompt = chat_prompt([{"role": "user", "content": row["prompt"]}])  # as preprocess wrote it
        assert predictions[row["id"]]["prompt"] == prompt
        expected = direct(loaded, prompt, max_new_tokens=5)
        assert (predictions[row["id"]]["completion"], predictions[row["id"]]["num_tokens"]) == expected


def test_decoded_training_prompt_gives_back_image_markers_and_chat_turns(tiny_vision_export):
    causal_lm, _ = tiny_vision_export
    preprocessor = causal_lm.preprocessor
    prompt = chat_prompt([{"role": "user", "content": images_in_front("Compare 12 and\n 34", 2)}])
    features = preprocessor.training_features({"prompts": prompt, "responses": "Alike."}, sequence_length=64)
    decoded = batch_inference.decode_prompt(features["token_ids"].numpy().tolist(),
                                            features["loss_mask"].numpy().tolist(), preprocessor.tokenizer,
                                            preprocessor.num_vision_tokens_per_image)
    assert decoded == prompt


class FakeModel:
    """`SavedModelGenerator.generate` with the model's kind of refusals: rows whose prompt starts with `bad`."""

    def __init__(self, unnamed=False):
        self.calls, self.unnamed = [], unnamed

    def generate(self, prompts, images, parameters):
        self.calls.append((list(prompts), images))
        for row, prompt in enumerate(prompts):
            if prompt.startswith("bad") and (len(prompts) == 1 or not self.unnamed):
                message = graph_message("empty_prompt", f"`prompt[{row}]` is empty; a prompt needs at least one "
                                        "character.")
                return {"error": f"Graph execution error:\nassertion failed: [{message}]\n\t "
                                 "[[{{node Assert_12/Assert}}]]"}
            if prompt.startswith("bad"):
                return {"error": "Graph execution error:\nsomething about the whole batch"}
        return {"completion": [prompt.upper() for prompt in prompts], "num_tokens": [len(p) for p in prompts]}


def test_refused_batches_lose_only_the_rows_the_model_names():
    handler = batch_inference.Gemma3SavedModelHandler("/models/gemma3/7", {"max_new_tokens": 3})
    batch = [{"prompt": "a", "images": [b"x"]}, {"prompt": "bad 1", "images": []},
             {"prompt": "c", "images": [b"y", b"z"]}, {"prompt": "bad 3", "images": []}]
    model = FakeModel()
    results = list(handler.run_inference(batch, model))
    assert [result.inference for result in results] == [
        {"completion": "A", "num_tokens": 1},
        {"reason": "`prompt` is empty; a prompt needs at least one character.", "reason_code": "empty_prompt"},
        {"completion": "C", "num_tokens": 1},
        {"reason": "`prompt` is empty; a prompt needs at least one character.", "reason_code": "empty_prompt"}]
    assert {result.model_id for result in results} == {"7"}
    assert model.calls[0][1] == [[b"x", b""], [b"", b""], [b"y", b"z"], [b"", b""]]  # padded with b""
    assert [prompts for prompts, _ in model.calls] == [["a", "bad 1", "c", "bad 3"], ["a", "c", "bad 3"], ["a", "c"]]
    unnamed = FakeModel(unnamed=True)  # a message naming no row: each row alone
    results = list(handler.run_inference(batch[:3], unnamed))
    assert [result.inference.get("reason_code") for result in results] == [None, "empty_prompt", None]
    assert len(unnamed.calls) == 4


def batches_of(pairs, bucket_by_length, work_dir, size=4, rows_per_group=256):
    """The batches (lists of ids) RunInference's BatchElements cuts (min = max = `size`) from (id, example)
    `pairs`, with or without `BatchByLength` before it, on the DirectRunner."""
    import apache_beam as beam

    prefix = os.path.join(work_dir, f"batches_{bucket_by_length}_{rows_per_group}")
    with beam.Pipeline() as pipeline:
        rows = pipeline | beam.Create(pairs, reshuffle=False)
        if bucket_by_length:
            rows = rows | batch_inference.BatchByLength(batch_inference.LENGTH_BUCKETS, rows_per_group)
        _ = (rows | beam.BatchElements(min_batch_size=size, max_batch_size=size)
             | beam.Map(lambda batch: json.dumps([key for key, _ in batch])) | beam.io.WriteToText(prefix))
    return [json.loads(line) for path in glob.glob(prefix + "*") for line in open(path)]


def test_batches_by_length_hold_prompts_of_one_bucket(tmp_path):
    # Lengths that interleave three buckets ([64, 128), [128, 256), [256, 512) bytes), an image row among them.
    lengths = [70, 300, 150, 80, 400, 200, 90, 260, 130, 100, 310, 140] * 3
    pairs = [(f"r{index}", {"prompt": "x" * length, "images": []}) for index, length in enumerate(lengths)]
    pairs.append(("image", {"prompt": "x" * 10, "images": [b"png"]}))  # 10 + IMAGE_LENGTH bytes
    bucket = {key: bisect.bisect_right(batch_inference.LENGTH_BUCKETS, batch_inference.prompt_length(example))
              for key, example in pairs}

    def mixed(batches):
        return sum(len({bucket[key] for key in batch}) > 1 for batch in batches)

    as_they_come = batches_of(pairs, bucket_by_length=False, work_dir=tmp_path)
    assert mixed(as_they_come) >= len(as_they_come) // 2  # the control: batches as rows come mix lengths
    for rows_per_group in (256, 6):  # one group per bucket; then buckets cut into groups of about 6
        by_length = batches_of(pairs, bucket_by_length=True, work_dir=tmp_path, rows_per_group=rows_per_group)
        assert sorted(key for batch in by_length for key in batch) == sorted(bucket)  # each row once
        groups = sum(-(-list(bucket.values()).count(b) // rows_per_group) for b in set(bucket.values()))
        assert mixed(by_length) <= groups - 1  # only where one group's rows end and the next one's start


def test_length_buckets_must_be_increasing(tiny_text_savedmodel, text_rows, tmp_path):
    for buckets in (["64", "32"], ["0", "64"]):
        with pytest.raises(SystemExit, match=r"--length_buckets must be increasing positive byte counts"):
            batch_inference.main(["--model_path", tiny_text_savedmodel[1], "--input", text_rows[0], "--output_dir",
                                  str(tmp_path), "--length_buckets", *buckets])


def test_generation_flags_the_model_refuses_stop_the_job(tiny_text_savedmodel, text_rows, tmp_path):
    with pytest.raises(Exception, match=r"refuses the generation flags .*`top_k\[0\]` must be at most"):
        batch_inference.main(["--model_path", tiny_text_savedmodel[1], "--input", text_rows[0], "--output_dir",
                              str(tmp_path), "--top_k", "100000"])
    with pytest.raises(SystemExit, match=r"--max_batch_size 65 is over the export's max_rows=64"):
        batch_inference.main(["--model_path", tiny_text_savedmodel[1], "--input", text_rows[0], "--output_dir",
                              str(tmp_path), "--max_batch_size", "65"])
    with pytest.raises(SystemExit, match="no saved_model.pb"):
        batch_inference.main(["--model_path", str(tmp_path), "--input", text_rows[0], "--output_dir", str(tmp_path)])


@pytest.mark.slow
def test_real_270m_export_through_the_pipeline_equals_the_in_process_model(real_causal_lm, real_270m_export,
                                                                           tmp_path):
    """Also the real export's check: 3 prompts x 12 greedy tokens equal `generate` in this process."""
    prompts = ["The capital of France is", "def fibonacci(n):", "Three facts about owls:"]
    rows = [{"id": f"p{index}", "prompt": prompt} for index, prompt in enumerate(prompts)]
    count = write_rows(tmp_path / "prompts.jsonl", rows, extra_lines=["not json"])
    batch_inference.main(["--model_path", real_270m_export, "--input", str(tmp_path / "prompts.jsonl"),
                          "--output_dir", str(tmp_path / "out"), "--max_new_tokens", "12", "--max_batch_size", "4"])
    predictions, errors = outputs(str(tmp_path / "out"))
    assert len(predictions) + len(errors) == count and [e["reason_code"] for e in errors] == ["bad_json"]
    expected = in_process(real_causal_lm, prompts, 12)
    assert [predictions[row["id"]]["completion"] for row in rows] == expected
    assert {record["model_version"] for record in predictions.values()} == {"1"}
