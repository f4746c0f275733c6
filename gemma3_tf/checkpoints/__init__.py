"""Checkpoints in every format Gemma 3 users hold, behind one `open_checkpoint(preset)`.

A checkpoint answers `backbone_config()` (Gemma3Backbone arguments, the vision
encoder's as a dict), `load_weights(backbone, progress)` and `tokenizer_proto()`.
Formats: keras-hub preset directories, transformers directories (safetensors),
llama.cpp GGUF files; sources: local and gs:// (any tf.io.gfile) paths, hf://, kaggle://, built-in preset
names and the packaged real 270M (see `sources`).
"""

import json
import os

from gemma3_tf.checkpoints import gguf, huggingface, keras_preset
from gemma3_tf.checkpoints.sources import PACKAGED_GGUF_PRESET, PathSource, PresetUnavailableError, source_for
from gemma3_tf.presets import PRESETS, VISION_ENCODER

__all__ = ["open_checkpoint", "PresetUnavailableError", "PACKAGED_GGUF_PRESET"]


class BuiltinPreset:
    """A built-in preset's architecture from our table, for `load_weights=False`: nothing to download."""

    format = "preset"

    def __init__(self, name):
        self.name = name

    def backbone_config(self):
        preset = PRESETS[self.name]
        config = dict(preset["backbone"], vision_encoder=None)
        if preset["vision"]:
            config["vision_encoder"] = dict(VISION_ENCODER, output_dim=config["hidden_dim"])
        return config


def _open_source(source):
    if source.is_file:
        path = source.get_file()
        return gguf.GGUFCheckpoint(path)
    if isinstance(source, PathSource) and not source.exists(keras_preset.CONFIG_FILE):
        listing = source.listing()[:8]
        raise ValueError(
            f"{source.description} is not a Gemma 3 checkpoint: expected a keras-hub preset directory "
            f"(config.json, model.weights.h5, assets/tokenizer/vocabulary.spm), a transformers directory "
            f"(config.json, *.safetensors, tokenizer.model) or a .gguf file. It holds: {listing}"
        )
    config_path = source.get_file(keras_preset.CONFIG_FILE)
    try:
        with open(config_path) as file:
            config = json.load(file)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source.description}/config.json is not valid JSON: {error}") from error
    if "registered_name" in config:
        return keras_preset.KerasPresetCheckpoint(source, config)
    if "model_type" in config:
        return huggingface.HuggingFaceCheckpoint(source, config)
    raise ValueError(
        f"{source.description}/config.json is neither a keras-hub config (no `registered_name`) nor a "
        f"transformers config (no `model_type`)."
    )


def open_checkpoint(preset, load_weights=True):
    """The checkpoint `preset` names (an opened checkpoint passes through). Without `load_weights`,
    a built-in preset name gives its architecture from our table and fetches nothing."""
    if hasattr(preset, "backbone_config"):
        return preset
    if not load_weights and isinstance(preset, str) and preset in PRESETS and not os.path.exists(preset):
        return BuiltinPreset(preset)
    return _open_source(source_for(preset))
