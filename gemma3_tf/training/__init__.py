"""Fine-tuning Gemma 3 on the TFRecords of `pipelines/preprocess.py`, under any `tf.distribute` strategy."""

from gemma3_tf.training.job import load_model, train
from gemma3_tf.training.optimizer import build_optimizer, learning_rate_schedule
from gemma3_tf.training.strategy import TPUUnavailableError, resolve_strategy
from gemma3_tf.training.trainer import TrainConfig, Trainer, check_data_matches_model

__all__ = ["TPUUnavailableError", "TrainConfig", "Trainer", "build_optimizer", "check_data_matches_model",
           "learning_rate_schedule", "load_model", "resolve_strategy", "train"]
