"""The training loop: XLA-compiled steps under a `tf.distribute` strategy, checkpoints that resume exactly.

A checkpoint holds the model and the optimizer (its step counter included). The data order is fixed
by the seed, so a restart skips the records of the steps already taken (before decoding them): a job
killed at any point and started again with the same command finishes with the weights an
uninterrupted run would have reached. (Distributed iterators, TPUStrategy's among them, cannot be
checkpointed themselves.)
"""

import dataclasses
import json
import logging
import os
import time

import keras
import tensorflow as tf

from gemma3_tf import data
from gemma3_tf.training.optimizer import build_optimizer


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int
    global_batch_size: int
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    decay: str = "cosine"
    weight_decay: float = 0.01
    clipnorm: float = 1.0
    checkpoint_every: int = 100
    log_every: int = 10
    jit_compile: bool = True
    seed: int = 0
    shuffle_buffer: int = 1024
    skip_image_examples: bool = False  # a text model on data made for a vision model: train on its text-only rows


def check_data_matches_model(schema, causal_lm, global_batch_size, skip_image_examples=False):
    """Raises ValueError, naming the field, when the TFRecords were made for another model or are too few."""
    preprocessor = causal_lm.preprocessor
    if preprocessor is not None:
        fingerprint = data.tokenizer_fingerprint(preprocessor.tokenizer)
        if schema.tokenizer_fingerprint != fingerprint:
            raise ValueError(f"The data's tokenizer_fingerprint is {schema.tokenizer_fingerprint} but the model's "
                             f"tokenizer is {fingerprint}: preprocess the data with this model's --preset.")
    vision = causal_lm.backbone.vision_encoder
    if vision is None and schema.max_images_per_prompt and not skip_image_examples:
        raise ValueError(f"The data has room for images (max_images_per_prompt={schema.max_images_per_prompt}) "
                         "but the model has no vision encoder: preprocess with this model's --preset (a text-only "
                         "preset's default is --max_images_per_prompt 0), or pass --skip_image_examples to train "
                         "on the examples without images.")
    if vision is not None and schema.max_images_per_prompt:
        model = (vision.image_size, vision.num_vision_tokens_per_image)
        if (schema.image_size, schema.num_vision_tokens_per_image) != model:
            raise ValueError(f"The data's image_size / num_vision_tokens_per_image are {schema.image_size} / "
                             f"{schema.num_vision_tokens_per_image}; the model's vision encoder takes "
                             f"{model[0]} / {model[1]}.")
    written = schema.counts.get("written")
    if written is not None and written < global_batch_size:
        raise ValueError(f"The data holds {written} examples, fewer than one global batch "
                         f"(global_batch_size={global_batch_size}).")


class Trainer:
    """Fine-tunes `causal_lm` (built under `strategy.scope()`) and checkpoints to `output_dir`."""

    def __init__(self, causal_lm, strategy, config, output_dir):
        self.causal_lm, self.strategy, self.config, self.output_dir = causal_lm, strategy, config, output_dir
        low_precision = sorted({v.dtype for v in causal_lm.trainable_variables} - {"float32", "float64"})
        if low_precision:
            # Keras' Adam computes 1 - beta_2 ** step in the variable's dtype: 0.999 rounds to 1 in
            # bfloat16, so every update would be zero.
            raise ValueError(f"Trainable weights in {low_precision[0]}: Keras' AdamW cannot update them (its "
                             "beta_2=0.999 rounds to 1.0). Train with dtype mixed_bfloat16 (float32 weights, "
                             "bfloat16 compute).")
        if config.global_batch_size % strategy.num_replicas_in_sync:
            raise ValueError(f"global_batch_size={config.global_batch_size} must be divisible by the "
                             f"{strategy.num_replicas_in_sync} replicas.")
        with strategy.scope():
            self.optimizer = build_optimizer(
                causal_lm, config.learning_rate, config.steps, config.warmup_steps, config.decay,
                config.weight_decay)
            self.optimizer.build(causal_lm.trainable_variables)
        self._replica_step = tf.function(self._step, jit_compile=True) if config.jit_compile else self._step
        self._train_steps = tf.function(self._train_steps_eager)
        self.history = []  # (step, mean loss per trained token since the previous entry, seconds they took)

    # --- compiled parts ---------------------------------------------------------------------
    def _loss_sums(self, batch, training):
        """(sum of the trained tokens' losses, their number) for one replica's batch."""
        inputs, labels, weights = batch
        logits = self.causal_lm(inputs, training=training)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        return tf.reduce_sum(losses * weights), tf.reduce_sum(weights)

    def _step(self, batch):
        variables = self.causal_lm.trainable_variables
        replica = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            loss_sum, tokens = self._loss_sums(batch, training=True)
            # The mean over the global batch's trained tokens: replicas' gradients then add up to it.
            loss = loss_sum / tf.maximum(replica.all_reduce("sum", tokens), 1.0)
        gradients = tape.gradient(loss, variables)
        if self.config.clipnorm:
            # Clip the global gradient: sum it here, clip, and hand each replica's equal share to the
            # optimizer, which adds the shares up again.
            replicas = replica.num_replicas_in_sync
            if replicas > 1:
                gradients = replica.all_reduce("sum", gradients)
            gradients, _ = tf.clip_by_global_norm(gradients, self.config.clipnorm)
            gradients = [gradient / replicas for gradient in gradients] if replicas > 1 else gradients
        self.optimizer.apply_gradients(zip(gradients, variables))
        return loss_sum, tokens

    def _train_steps_eager(self, iterator, count):
        loss_sum, tokens = tf.constant(0.0), tf.constant(0.0)
        for _ in tf.range(count):
            step_loss, step_tokens = self.strategy.run(self._replica_step, args=(next(iterator),))
            loss_sum += self.strategy.reduce("sum", step_loss, axis=None)
            tokens += self.strategy.reduce("sum", step_tokens, axis=None)
        return loss_sum, tokens

    # --- the loop ---------------------------------------------------------------------------
    def dataset(self, pattern, schema, training=True, skip_batches=0):
        with_images = self.causal_lm.backbone.vision_encoder is not None
        return data.load_tfrecord_dataset(
            pattern, self.config.global_batch_size, schema, shuffle=training, shuffle_buffer=self.config.shuffle_buffer,
            seed=self.config.seed, repeat=training, drop_remainder=training, with_images=with_images,
            skip_batches=skip_batches)

    def fit(self, train_pattern, eval_pattern=None, progress=True):
        """Trains up to `config.steps` (resuming from the latest checkpoint); returns the summary dict."""
        config = self.config
        schema = data.Schema.for_pattern(train_pattern)
        check_data_matches_model(schema, self.causal_lm, config.global_batch_size, config.skip_image_examples)
        checkpoint = tf.train.Checkpoint(model=self.causal_lm, optimizer=self.optimizer)
        manager = tf.train.CheckpointManager(checkpoint, os.path.join(self.output_dir, "checkpoints"), max_to_keep=2)
        resumed_from = 0
        if manager.latest_checkpoint:
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
            resumed_from = int(self.optimizer.iterations)
            logging.info("Resumed from %s (step %d)", manager.latest_checkpoint, resumed_from)
        dataset = self.dataset(train_pattern, schema, skip_batches=resumed_from)
        iterator = iter(self.strategy.experimental_distribute_dataset(dataset))
        writer = tf.summary.create_file_writer(os.path.join(self.output_dir, "logs"))
        bar = keras.utils.Progbar(config.steps, stateful_metrics=["loss", "tokens/s"], verbose=1 if progress else 0)
        step, trained_tokens, seconds = resumed_from, 0.0, 0.0
        positions_per_step = config.global_batch_size * schema.sequence_length
        while step < config.steps:
            count = min(config.log_every, config.steps - step, config.checkpoint_every - step % config.checkpoint_every)
            start = time.perf_counter()
            loss_sum, tokens = self._train_steps(iterator, tf.constant(count))
            loss, tokens = float(loss_sum) / max(float(tokens), 1.0), float(tokens)
            elapsed = time.perf_counter() - start
            step += count
            trained_tokens, seconds = trained_tokens + tokens, seconds + elapsed
            self.history.append((step, loss, elapsed))
            with writer.as_default(step=step):
                tf.summary.scalar("loss", loss)
                tf.summary.scalar("learning_rate", float(self.optimizer.learning_rate))
                tf.summary.scalar("tokens_per_second", count * positions_per_step / elapsed)
            bar.update(step, [("loss", loss), ("tokens/s", count * positions_per_step / elapsed)])
            if step % config.checkpoint_every == 0 or step == config.steps:
                manager.save(checkpoint_number=step)
        summary = {"steps": step, "resumed_from": resumed_from,
                   "first_loss": self.history[0][1] if self.history else None,
                   "loss": self.history[-1][1] if self.history else None,
                   "trained_tokens": trained_tokens, "seconds": round(seconds, 3),
                   "tokens_per_second": round((step - resumed_from) * positions_per_step / seconds, 1) if seconds else None,
                   "strategy": type(self.strategy).__name__, "replicas": self.strategy.num_replicas_in_sync}
        if eval_pattern:
            summary["eval_loss"] = self.evaluate(eval_pattern)
        return summary

    def evaluate(self, pattern):
        """Mean loss per trained token over all examples under `pattern`."""
        schema = data.Schema.for_pattern(pattern)
        check_data_matches_model(schema, self.causal_lm, 1, self.config.skip_image_examples)

        @tf.function
        def sums(batch):
            loss_sum, tokens = self.strategy.run(lambda b: self._loss_sums(b, training=False), args=(batch,))
            return self.strategy.reduce("sum", loss_sum, axis=None), self.strategy.reduce("sum", tokens, axis=None)

        loss_sum = tokens = 0.0
        for batch in self.strategy.experimental_distribute_dataset(self.dataset(pattern, schema, training=False)):
            batch_loss, batch_tokens = sums(batch)
            loss_sum, tokens = loss_sum + float(batch_loss), tokens + float(batch_tokens)
        return loss_sum / max(tokens, 1.0)

    def save(self, preset_dir, summary=None, merge_lora=True):
        """The trained model as a preset directory (LoRA merged into the kernels, or kept apart), plus
        `summary.json`."""
        self.causal_lm.save_to_preset(preset_dir, merge_lora=merge_lora)
        if summary is not None:
            with tf.io.gfile.GFile(os.path.join(self.output_dir, "summary.json"), "w") as file:
                json.dump(summary, file, indent=2)
