"""Every path a user gives may be a `scheme://` path (gs:// in production), tested on TensorFlow's `ram://`.

`ram://` goes through `tf.io.gfile` as gs:// does, and Keras and our code treat it as remote; the
Beam jobs reach it through `ram_filesystem.RamFileSystem`. A write that took `os.path`/`open()`/h5py
instead lands in a local folder named `ram:`: each test runs in an empty working directory and
checks that none appeared.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import gemma3_tf
import ram_filesystem  # noqa: F401  (registers ram:// with Beam)
from gemma3_tf import cli
from gemma3_tf.checkpoints import huggingface
from keras_hub_oracle import randomize, vision_inputs
from serving.client import RestClient
from serving.server import serve
from test_gguf import write_tiny_gguf
from test_training import MODEL_CONFIG
from tiny_exports import in_process, tiny_lm


@pytest.fixture(autouse=True)
def no_local_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield
    assert not [path for path, _, _ in os.walk(tmp_path) if path.endswith(("ram:", "gs:"))], "a local write"


def read_lines(pattern):
    return [line for path in sorted(tf.io.gfile.glob(pattern)) for line in tf.io.gfile.GFile(path).read().splitlines()]


def test_presets_round_trip_through_a_remote_directory(tiny_proto):
    causal_lm = tiny_lm(tiny_proto, vision=True, attention_logit_soft_cap=None)  # transformers has no such cap
    causal_lm.backbone.enable_lora(2)
    randomize(causal_lm.backbone, seed=3, scale=0.2)  # the LoRA factors too, so that kept-apart adapters matter
    inputs = vision_inputs((1, 2), vocabulary_size=400)
    expected = np.asarray(causal_lm.backbone(inputs))
    causal_lm.save_to_preset("ram://presets/lora", merge_lora=False)
    assert tf.io.gfile.exists("ram://presets/lora/lora_adapters.h5")
    assert tf.io.gfile.exists("ram://presets/lora/assets/tokenizer/vocabulary.spm")
    reloaded = gemma3_tf.Gemma3CausalLM.from_preset("ram://presets/lora", progress=False)
    assert reloaded.backbone.lora_rank == 2
    np.testing.assert_allclose(np.asarray(reloaded.backbone(inputs)), expected, atol=1e-5)
    assert reloaded.preprocessor.tokenizer.proto == causal_lm.preprocessor.tokenizer.proto
    # Sharded weights (Keras itself copies only the index of a remote sharded save).
    causal_lm.backbone.save_to_preset("ram://presets/sharded", max_shard_size=0.00003)
    shards = tf.io.gfile.glob("ram://presets/sharded/*.weights.h5")
    assert len(shards) > 1
    backbone = gemma3_tf.Gemma3Backbone.from_preset("ram://presets/sharded", progress=False)
    np.testing.assert_allclose(np.asarray(backbone(inputs)), np.asarray(causal_lm.backbone(inputs)), atol=1e-5)
    # `gemma3-tf convert` from and to remote directories, both formats.
    cli.main(["convert", "ram://presets/lora", "ram://presets/hf", "--format", "hf"])
    cli.main(["convert", "ram://presets/hf", "ram://presets/keras"])
    converted = gemma3_tf.Gemma3Backbone.from_preset("ram://presets/keras", progress=False)
    np.testing.assert_allclose(np.asarray(converted(inputs)), expected, atol=1e-4)
    assert json.loads(tf.io.gfile.GFile("ram://presets/hf/config.json").read())["model_type"] == \
        huggingface.MULTIMODAL_MODEL_TYPE
    with pytest.raises(ValueError, match="neither an existing file or directory"):
        gemma3_tf.Gemma3Backbone.from_preset("ram://presets/missing")
    tokenizer = gemma3_tf.Gemma3Tokenizer("ram://presets/lora/assets/tokenizer/vocabulary.spm")
    assert tokenizer.proto == causal_lm.preprocessor.tokenizer.proto


def test_a_gguf_file_at_a_remote_path_loads(tmp_path):
    local = write_tiny_gguf(tmp_path / "tiny.gguf")
    tf.io.gfile.makedirs("ram://gguf")
    tf.io.gfile.copy(local, "ram://gguf/tiny.gguf")
    expected = [weight.numpy() for weight in gemma3_tf.Gemma3Backbone.from_preset(local, progress=False).weights]
    remote = gemma3_tf.Gemma3Backbone.from_preset("ram://gguf/tiny.gguf", progress=False)
    for weight, value in zip(remote.weights, expected):
        np.testing.assert_array_equal(weight.numpy(), value)


def test_the_default_chain_on_a_text_preset_runs_on_remote_paths(tiny_proto, capsys):
    """preprocess -> train -> export -> batch-infer -> serve, every path remote, every flag at its default
    but the preset, the paths and the step count."""
    backbone = gemma3_tf.Gemma3Backbone(**MODEL_CONFIG)
    randomize(backbone, scale=0.1)
    preprocessor = gemma3_tf.Gemma3CausalLMPreprocessor(gemma3_tf.Gemma3Tokenizer(tiny_proto))
    gemma3_tf.Gemma3CausalLM(backbone, preprocessor).save_to_preset("ram://chain/preset")
    rows = [{"id": str(i), "prompt": f"Question {i}: the fox?", "response": f"The quick brown fox {i}."}
            for i in range(8)]
    with tf.io.gfile.GFile("ram://chain/rows.jsonl", "w") as file:
        file.write("".join(json.dumps(row) + "\n" for row in rows))

    cli.main(["preprocess", "--input", "ram://chain/rows.jsonl", "--output_dir", "ram://chain/data",
              "--preset", "ram://chain/preset"])
    schema = json.loads(tf.io.gfile.GFile("ram://chain/data/schema.json").read())
    assert schema["max_images_per_prompt"] == 0 and schema["counts"]["written"] == 8

    cli.main(["train", "--preset", "ram://chain/preset", "--train_data", "ram://chain/data/*.tfrecord",
              "--output_dir", "ram://chain/run", "--steps", "2"])
    summary = json.loads(tf.io.gfile.GFile("ram://chain/run/summary.json").read())
    assert summary["steps"] == 2 and summary["final_preset"] == "ram://chain/run/final"
    assert tf.io.gfile.glob("ram://chain/run/checkpoints/ckpt-2.index")
    assert tf.io.gfile.glob("ram://chain/run/logs/events.out.tfevents.*")

    cli.main(["export", "--preset", "ram://chain/run/final", "--model_base_path", "ram://chain/models/gemma3"])
    assert tf.io.gfile.exists("ram://chain/models/gemma3/1/assets.extra/tf_serving_warmup_requests")
    assert "base_path: 'ram://chain/models/gemma3'" in tf.io.gfile.GFile("ram://chain/models/models.config").read()
    assert tf.io.gfile.exists("ram://chain/models/batching_parameters.txt")

    prompts = [{"id": row["id"], "prompt": row["prompt"]} for row in rows[:3]]
    with tf.io.gfile.GFile("ram://chain/prompts.jsonl", "w") as file:
        file.write("".join(json.dumps(row) + "\n" for row in prompts))
    cli.main(["batch-infer", "--model_path", "ram://chain/models/gemma3/1", "--input", "ram://chain/prompts.jsonl",
              "--output_dir", "ram://chain/predictions", "--max_new_tokens", "4"])
    records = map(json.loads, read_lines("ram://chain/predictions/predictions-*"))
    predictions = {record["id"]: record for record in records}
    assert sorted(predictions) == ["0", "1", "2"] and not read_lines("ram://chain/predictions/errors-*")

    trained = gemma3_tf.Gemma3CausalLM.from_preset("ram://chain/run/final", progress=False)
    expected = in_process(trained, [row["prompt"] for row in prompts], 4)
    assert [predictions[row["id"]]["completion"] for row in prompts] == expected
    with serve(model_config_file="ram://chain/models/models.config", port=None, rest_api_port=0,
               file_system_poll_wait_seconds=0) as server:
        server.wait_until_ready()
        client = RestClient(f"http://localhost:{server.rest_port}", "gemma3", timeout=120)
        served = client.generate([row["prompt"] for row in prompts], max_new_tokens=4)
    assert [row["completion"] for row in served] == expected
