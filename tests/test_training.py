"""Fine-tuning: overfitting, exact resume after a kill, MirroredStrategy against the default one, LoRA,
the TPU path up to its error, and data that does not match the model."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import gemma3_tf
from gemma3_tf import data
from gemma3_tf.training import TPUUnavailableError, TrainConfig, Trainer, check_data_matches_model, resolve_strategy
from keras_hub_oracle import TEXT_CONFIG, randomize
from pipelines import preprocess
from session_savedmodel import SessionSavedModel
from tiny_exports import in_process

SEQUENCE_LENGTH = 96
MODEL_CONFIG = dict(TEXT_CONFIG, vocabulary_size=400, num_layers=2, hidden_dim=64, intermediate_dim=128,
                    head_dim=16, final_logit_soft_cap=None, attention_logit_soft_cap=None)


def make_preset(path, proto):
    backbone = gemma3_tf.Gemma3Backbone(**MODEL_CONFIG)
    randomize(backbone, scale=0.1)
    preprocessor = gemma3_tf.Gemma3CausalLMPreprocessor(gemma3_tf.Gemma3Tokenizer(proto),
                                                        sequence_length=SEQUENCE_LENGTH)
    gemma3_tf.Gemma3CausalLM(backbone, preprocessor).save_to_preset(str(path))
    return str(path)


def make_data(root, preset, rows, sequence_length=SEQUENCE_LENGTH):
    (root / "rows.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    preprocess.main(["--input", str(root / "rows.jsonl"), "--output_dir", str(root / "data"), "--preset", preset,
                     "--sequence_length", str(sequence_length), "--no_chat_template", "--max_images_per_prompt", "0",
                     "--num_shards", "2"])
    return str(root / "data" / "train-*.tfrecord")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_proto):
    """A tiny random text model as a preset, and 8 examples of TFRecords for it."""
    root = tmp_path_factory.mktemp("training")
    preset = make_preset(root / "preset", tiny_proto)
    rows = [{"id": str(i), "prompt": f"Question {i}: the fox?", "response": f"The quick brown fox {i}."}
            for i in range(8)]
    return preset, make_data(root, preset, rows)


def make_trainer(preset, output_dir, strategy=None, lora_rank=0, **config):
    strategy = strategy or resolve_strategy("default")
    with strategy.scope():
        causal_lm = gemma3_tf.Gemma3CausalLM.from_preset(preset, progress=False)
        if lora_rank:
            causal_lm.backbone.enable_lora(lora_rank)
    config = TrainConfig(**{"steps": 20, "global_batch_size": 4, "learning_rate": 1e-2, "log_every": 5,
                            "checkpoint_every": 10, **config})
    return Trainer(causal_lm, strategy, config, str(output_dir))


def train(preset, pattern, output_dir, **kwargs):
    trainer = make_trainer(preset, output_dir, **kwargs)
    return trainer, trainer.fit(pattern, progress=False)


def test_tiny_model_overfits_eight_examples(tiny, tmp_path):
    trainer, summary = train(*tiny, tmp_path, steps=150, global_batch_size=8, log_every=10, checkpoint_every=150,
                             warmup_steps=10)
    first, last = trainer.history[0][1], trainer.history[-1][1]
    assert last <= 0.1 * first, trainer.history
    assert summary["steps"] == 150 and summary["tokens_per_second"] > 0
    assert trainer.evaluate(tiny[1]) < 0.1 * first
    trainer.save(str(tmp_path / "final"), summary)
    reloaded = gemma3_tf.Gemma3CausalLM.from_preset(str(tmp_path / "final"), progress=False)
    batch = next(iter(data.load_tfrecord_dataset(tiny[1], 4, shuffle=False)))[0]
    np.testing.assert_allclose(reloaded(batch), trainer.causal_lm(batch), atol=1e-5)
    assert json.load(open(tmp_path / "summary.json"))["steps"] == 150


def test_killed_and_resumed_run_reaches_the_same_weights(tiny, tmp_path):
    tf.config.experimental.enable_op_determinism()
    uninterrupted, _ = train(*tiny, tmp_path / "a")
    # Killed during steps 11-15 (checkpoints every 10, the loop runs 5 steps per call): the restart resumes
    # from step 10 and replays steps 11-15 from the saved data position.
    killed = make_trainer(tiny[0], tmp_path / "b")
    run_steps, calls = killed._train_steps, []

    def kill_on_third_call(iterator, count):
        calls.append(run_steps(iterator, count))
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return calls[-1]

    killed._train_steps = kill_on_third_call
    with pytest.raises(KeyboardInterrupt):
        killed.fit(tiny[1], progress=False)
    resumed, summary = train(*tiny, tmp_path / "b")
    assert summary["resumed_from"] == 10 and summary["steps"] == 20
    for ours, theirs in zip(resumed.causal_lm.weights, uninterrupted.causal_lm.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)


def test_lora_trains_only_the_adapters(tiny, tmp_path):
    trainer, _ = train(*tiny, tmp_path, steps=10, lora_rank=2)
    before = gemma3_tf.Gemma3CausalLM.from_preset(tiny[0], progress=False).backbone
    trained = {weight.path: weight.numpy() for weight in trainer.causal_lm.backbone.weights}
    for weight in before.weights:
        np.testing.assert_array_equal(trained[weight.path], weight.numpy(), err_msg=weight.path)
    lora = [path for path in trained if "lora" in path]
    assert lora and all(not np.all(trained[path] == 0) for path in lora)
    assert trainer.history[-1][1] < trainer.history[0][1]
    # The saved preset merges the adapters into the kernels: same outputs without LoRA layers.
    trainer.save(str(tmp_path / "final"))
    merged = gemma3_tf.Gemma3CausalLM.from_preset(str(tmp_path / "final"), progress=False)
    batch = next(iter(data.load_tfrecord_dataset(tiny[1], 4, shuffle=False)))[0]
    np.testing.assert_allclose(merged(batch), trainer.causal_lm(batch), atol=1e-4)
    assert not any("lora" in weight.path for weight in merged.weights)
    # Kept apart: the base weights unchanged, and from_preset gives the LoRA model back.
    trainer.save(str(tmp_path / "kept"), merge_lora=False)
    kept = gemma3_tf.Gemma3CausalLM.from_preset(str(tmp_path / "kept"), progress=False)
    np.testing.assert_allclose(kept(batch), trainer.causal_lm(batch), atol=1e-5)
    assert kept.backbone.lora_rank == 2
    base_weights = {weight.path: weight.numpy() for weight in before.weights}
    for weight in kept.backbone.weights:
        if weight.path in base_weights:
            np.testing.assert_array_equal(weight.numpy(), base_weights[weight.path], err_msg=weight.path)


MIRRORED_SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, "tests")
from test_training import train
preset, pattern, out = sys.argv[1:4]
histories = {}
for name in ("default", "mirrored"):
    from gemma3_tf.training import resolve_strategy
    strategy = resolve_strategy(name)
    trainer, summary = train(preset, pattern, f"{out}/{name}", strategy=strategy, steps=6, log_every=1,
                             jit_compile=False)
    histories[name] = [trainer.history, summary["replicas"]]
print(json.dumps(histories))
"""


def test_mirrored_strategy_gives_the_default_loss_curve(tiny, tmp_path):
    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, *tiny, str(tmp_path)], capture_output=True,
                            text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 0, result.stderr[-3000:]
    histories = json.loads(result.stdout.strip().splitlines()[-1])
    (default, one), (mirrored, two) = histories["default"], histories["mirrored"]
    assert (one, two) == (1, 2)
    np.testing.assert_allclose([entry[1] for entry in mirrored], [entry[1] for entry in default], rtol=1e-4)


def test_tpu_path_fails_clearly_without_a_tpu():
    with pytest.raises(TPUUnavailableError, match=r"Cannot use TPU local: TPUs not found.*--strategy default or mirrored"):
        resolve_strategy("tpu", tpu="local")
    with pytest.raises(TPUUnavailableError, match=r"Cannot use TPU \(none named\): Please provide a TPU Name"):
        resolve_strategy("tpu")
    with pytest.raises(ValueError, match="`strategy` must be one of"):
        resolve_strategy("gpu")


def test_data_for_another_model_is_refused_before_training(tiny, tmp_path):
    schema = data.Schema.load(os.path.dirname(tiny[1]))
    causal_lm = gemma3_tf.Gemma3CausalLM.from_preset(tiny[0], progress=False)
    other = data.Schema(**{**schema.__dict__, "tokenizer_fingerprint": "0123456789abcdef"})
    with pytest.raises(ValueError, match="tokenizer_fingerprint is 0123456789abcdef"):
        check_data_matches_model(other, causal_lm, 4)
    with pytest.raises(ValueError, match="max_images_per_prompt=2.*no vision encoder"):
        check_data_matches_model(data.Schema(**{**schema.__dict__, "max_images_per_prompt": 2}), causal_lm, 4)
    with pytest.raises(ValueError, match="holds 8 examples, fewer than one global batch"):
        check_data_matches_model(schema, causal_lm, 16)


def test_a_text_model_takes_data_made_for_vision_only_when_told_and_then_only_its_rows_without_images(tiny, tmp_path,
                                                                                                    capsys):
    from gemma3_tf import cli
    from test_preprocessing import png

    (tmp_path / "square.png").write_bytes(png(32, 32)[0])
    rows = [{"id": str(i), "prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(6)]
    rows += [{"id": f"image-{i}", "prompt": "Describe", "response": "A square.", "images": ["square.png"]}
             for i in range(2)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    preprocess.main(["--input", str(tmp_path / "rows.jsonl"), "--output_dir", str(tmp_path / "data"), "--preset",
                     tiny[0], "--max_images_per_prompt", "1", "--image_size", "28", "--num_vision_tokens_per_image",
                     "4", "--sequence_length", str(SEQUENCE_LENGTH), "--num_shards", "1"])
    pattern = str(tmp_path / "data" / "train-*.tfrecord")
    train = ["train", "--preset", tiny[0], "--train_data", pattern, "--output_dir", str(tmp_path / "run"),
             "--steps", "2", "--global_batch_size", "2", "--strategy", "default"]
    assert cli.main(train) == 2
    error = capsys.readouterr().err
    assert re.match(r"gemma3-tf train: error: .*no vision encoder: preprocess with this model's --preset.*"
                    r"--skip_image_examples", error) and error.count("\n") == 1
    text_only = data.load_tfrecord_dataset(pattern, 1, shuffle=False, with_images=False)
    inputs = [batch[0] for batch in text_only]
    assert len(inputs) == 6 and set(inputs[0]) == {"token_ids", "padding_mask"}
    cli.main(train + ["--skip_image_examples"])
    assert json.load(open(tmp_path / "run" / "summary.json"))["steps"] == 2


def test_remat_gives_the_same_gradients(tiny):
    from gemma3_tf.training import load_model

    strategy = resolve_strategy("default")
    batch = next(iter(data.load_tfrecord_dataset(tiny[1], 4, shuffle=False)))
    gradients = []
    for remat in (False, True):
        causal_lm = load_model(tiny[0], strategy, remat=remat)
        inputs, labels, weights = batch
        with tf.GradientTape() as tape:
            logits = causal_lm(inputs, training=True)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits) * weights)
        gradients.append(tape.gradient(loss, causal_lm.trainable_variables))
    assert load_model(tiny[0], strategy, remat=True).backbone.remat
    for plain, recomputed in zip(*gradients):
        np.testing.assert_allclose(recomputed, plain, rtol=1e-5, atol=1e-6)


def test_train_command_writes_a_loadable_preset_and_summary(tiny, tmp_path):
    from gemma3_tf import cli

    cli.main(["train", "--preset", tiny[0], "--train_data", tiny[1], "--eval_data", tiny[1], "--output_dir",
              str(tmp_path), "--epochs", "2", "--global_batch_size", "4", "--lora_rank", "2", "--remat",
              "--learning_rate", "1e-2", "--log_every", "2", "--strategy", "default"])
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["steps"] == 4 and summary["lora_rank"] == 2 and np.isfinite(summary["eval_loss"])
    trained = gemma3_tf.Gemma3CausalLM.from_preset(summary["final_preset"], progress=False)
    assert tf.io.gfile.glob(str(tmp_path / "logs" / "events.out.tfevents.*"))
    # What the job wrote exports and answers through TF Serving's loader like the in-process model.
    cli.main(["export", "--preset", summary["final_preset"], "--model_base_path", str(tmp_path / "models" / "tuned"),
              "--max_length", "64"])
    prompts = ["Question 3: the fox?", "Question 5"]
    served = SessionSavedModel(str(tmp_path / "models" / "tuned" / "1")).generate(prompt=prompts, max_new_tokens=5)
    assert [text.decode() for text in served["completion"]] == in_process(trained, prompts, 5)


@pytest.mark.slow
def test_lora_on_the_real_270m_lowers_the_loss(gguf_checkpoint, tmp_path):
    rows = [{"id": str(i), "prompt": f"What is the secret word number {i}?", "response": f"The secret word is zebra{i}."}
            for i in range(8)]
    pattern = make_data(tmp_path, gguf_checkpoint.path, rows, sequence_length=24)
    # The opened checkpoint, not its path: the session has parsed the file once already. No XLA: its
    # compile of the 270M's train step takes longer than the six steps.
    trainer = make_trainer(gguf_checkpoint, tmp_path / "out", lora_rank=4, steps=6, global_batch_size=4,
                           learning_rate=3e-3, log_every=6, checkpoint_every=6, jit_compile=False)
    kernels = {weight.path: weight.numpy() for weight in trainer.causal_lm.backbone.weights if "lora" not in weight.path}
    before = trainer.evaluate(pattern)
    trainer.fit(pattern, progress=False)
    after = trainer.evaluate(pattern)
    assert after < 0.8 * before, (before, after)
    assert all("lora" in weight.path for weight in trainer.causal_lm.trainable_variables)
    for weight in trainer.causal_lm.backbone.weights:
        if weight.path in kernels:
            np.testing.assert_array_equal(weight.numpy(), kernels[weight.path], err_msg=weight.path)


def test_plan_counts_what_training_allocates(tiny, tmp_path):
    from gemma3_tf.training import planner

    for lora_rank in (0, 2):
        trainer = make_trainer(tiny[0], tmp_path / str(lora_rank), lora_rank=lora_rank)
        memory = planner.plan(tiny[0], 4, SEQUENCE_LENGTH, lora_rank=lora_rank)

        def size(variables):
            return sum(v.numpy().nbytes for v in variables)

        assert memory.parameter_bytes == size(trainer.causal_lm.weights)
        assert memory.gradient_bytes == size(trainer.causal_lm.trainable_variables)
        slots = [v for v in trainer.optimizer.variables if len(v.shape) > 0 or v.path.endswith(("momentum", "velocity"))]
        assert memory.optimizer_bytes == size([v for v in slots if "iteration" not in v.path
                                               and "learning_rate" not in v.path])


def test_plan_command_for_the_big_presets(capsys):
    from gemma3_tf import cli

    assert cli.main(["plan", "--preset", "gemma3_27b", "--global_batch_size", "16", "--sequence_length", "2048",
                     "--replicas", "16", "--lora_rank", "8", "--dtype", "bfloat16", "--remat", "--device", "v5p"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "v5p" in out and "fits" in out
    assert cli.main(["plan", "--preset", "gemma3_27b", "--global_batch_size", "8", "--sequence_length", "2048",
                     "--device", "v5e"]) == 1  # full fine-tune in float32: 27B x 16 bytes
    assert "does NOT fit" in capsys.readouterr().out


def test_mixed_bfloat16_training_lowers_the_loss_and_pure_bfloat16_is_refused(tiny, tmp_path):
    from gemma3_tf.training import load_model

    strategy = resolve_strategy("default")
    config = TrainConfig(steps=20, global_batch_size=8, learning_rate=1e-2, log_every=10, checkpoint_every=20)
    causal_lm = load_model(tiny[0], strategy, dtype="mixed_bfloat16")
    trainer = Trainer(causal_lm, strategy, config, str(tmp_path))
    trainer.fit(tiny[1], progress=False)
    (_, first, _), (_, last, _) = trainer.history
    assert np.isfinite(last) and last < 0.8 * first, trainer.history
    assert {weight.dtype for weight in causal_lm.trainable_variables} == {"float32"}
    with pytest.raises(ValueError, match="Trainable weights in bfloat16: Keras' AdamW cannot update them"):
        Trainer(load_model(tiny[0], strategy, dtype="bfloat16"), strategy, config, str(tmp_path / "bf16"))
