"""Fine-tuning Gemma 3 on the TFRecords of `pipelines/preprocess.py`, under any `tf.distribute` strategy."""

from gemma3_tf._lazy import lazy_attributes

__all__ = ["TPUUnavailableError", "TrainConfig", "Trainer", "build_optimizer", "check_data_matches_model",
           "learning_rate_schedule", "load_model", "resolve_strategy", "train"]
_MODULES = {"load_model": "job", "train": "job", "build_optimizer": "optimizer", "learning_rate_schedule": "optimizer",
            "TPUUnavailableError": "strategy", "resolve_strategy": "strategy", "TrainConfig": "trainer",
            "Trainer": "trainer", "check_data_matches_model": "trainer"}
__getattr__, __dir__ = lazy_attributes(
    __name__, {name: f"{__name__}.{module}:{name}" for name, module in _MODULES.items()})
