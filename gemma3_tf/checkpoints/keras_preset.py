"""keras-hub preset directories (Kaggle's `keras/gemma3/keras/*`), read and written.

A preset holds `config.json` (the serialized backbone), `model.weights.h5` (or
`model.weights.json` plus shards), `metadata.json`, `tokenizer.json` and
`assets/tokenizer/vocabulary.spm`. Our layers keep keras-hub's names, so the
weights files are interchangeable; the JSON files name keras-hub's classes, so
keras-hub's own `from_preset` loads what we write.
"""

import collections
import datetime
import json
import math
import os
import tempfile

import h5py
import keras
import tensorflow as tf

from gemma3_tf import filesystem

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
SHARDED_WEIGHTS_FILE = "model.weights.json"
LORA_FILE = "lora_adapters.h5"  # gemma3-tf's own: LoRA factors kept apart from the base weights
METADATA_FILE = "metadata.json"
TOKENIZER_CONFIG_FILE = "tokenizer.json"
PREPROCESSOR_CONFIG_FILE = "preprocessor.json"
IMAGE_CONVERTER_CONFIG_FILE = "image_converter.json"
VOCABULARY_FILE = "assets/tokenizer/vocabulary.spm"

_KERAS_HUB = {
    "Gemma3Backbone": "keras_hub.src.models.gemma3.gemma3_backbone",
    "Gemma3VisionEncoder": "keras_hub.src.models.gemma3.gemma3_vision_encoder",
    "Gemma3Tokenizer": "keras_hub.src.models.gemma3.gemma3_tokenizer",
    "Gemma3ImageConverter": "keras_hub.src.models.gemma3.gemma3_image_converter",
    "Gemma3CausalLMPreprocessor": "keras_hub.src.models.gemma3.gemma3_causal_lm_preprocessor",
}
_BACKBONE_NAMES = ("keras_hub>Gemma3Backbone", "gemma3_tf>Gemma3Backbone")
# keras-hub arguments for EmbeddingGemma, which this project does not implement: value -> supported only if default.
_UNSUPPORTED_DEFAULTS = {"use_bidirectional_attention": False, "is_embedding_model": False,
                         "pooling_intermediate_dim": None, "embedding_dim": None}
_LAYER_KEYS = ("name", "trainable", "dtype")


class KerasPresetCheckpoint:
    format = "keras"

    def __init__(self, source, config):
        self.source = source
        if config.get("registered_name") not in _BACKBONE_NAMES:
            raise ValueError(
                f"{source.description}/{CONFIG_FILE} describes {config.get('registered_name')!r}; "
                f"expected a Gemma 3 backbone ({' or '.join(_BACKBONE_NAMES)})."
            )
        self.config = config["config"]

    def backbone_config(self):
        config = {k: v for k, v in self.config.items() if k not in _LAYER_KEYS}
        for key, default in _UNSUPPORTED_DEFAULTS.items():
            value = config.pop(key, default)
            if value != default:
                raise ValueError(
                    f"{self.source.description}: `{key}` is {value!r} (an EmbeddingGemma model); "
                    f"gemma3_tf supports Gemma 3 causal models only ({key}={default!r})."
                )
        vision = config.get("vision_encoder")
        if vision is not None:
            config["vision_encoder"] = {k: v for k, v in vision["config"].items() if k not in _LAYER_KEYS}
        return config

    def load_weights(self, backbone, progress=True):
        if self.source.exists(WEIGHTS_FILE):
            path = self.source.get_file(WEIGHTS_FILE)
            shards = [path]
        elif self.source.exists(SHARDED_WEIGHTS_FILE):
            path = self.source.get_file(SHARDED_WEIGHTS_FILE)
            with open(path) as file:
                weight_map = json.load(file)["weight_map"]
            # Keras names a layer's shard, or lists them when its variables span several.
            names = sorted({name for value in weight_map.values()
                            for name in ([value] if isinstance(value, str) else value)})
            shards = [self.source.get_file(name) for name in names]
        else:
            raise FileNotFoundError(
                f"{self.source.description} has a keras-hub {CONFIG_FILE} but neither {WEIGHTS_FILE} "
                f"nor {SHARDED_WEIGHTS_FILE}."
            )
        check_weights_match(backbone, shards, self.source.description)
        backbone.load_weights(path)
        if self.source.exists(LORA_FILE):
            load_lora(backbone, self.source.get_file(LORA_FILE))

    def tokenizer_proto(self):
        with open(self.source.get_file(VOCABULARY_FILE), "rb") as file:
            return file.read()

    def preprocessor_config(self):
        """The packing settings of `preprocessor.json` ({} without one)."""
        if not self.source.exists(PREPROCESSOR_CONFIG_FILE):
            return {}
        with open(self.source.get_file(PREPROCESSOR_CONFIG_FILE)) as file:
            config = json.load(file)["config"]
        keys = ("sequence_length", "add_start_token", "add_end_token", "max_images_per_prompt",
                "num_vision_tokens_per_image")
        return {key: config[key] for key in keys if key in config}


def _stored_shapes(shards, description):
    """(path, shape) of every tensor in the `.weights.h5` files."""
    stored = []
    for shard in shards:
        try:
            with h5py.File(shard, "r") as file:
                file.visititems(
                    lambda name, item: stored.append((name, item.shape)) if isinstance(item, h5py.Dataset) else None
                )
        except OSError as error:
            raise ValueError(
                f"{description}: {os.path.basename(shard)} is not a readable HDF5 weights file "
                f"(truncated or corrupt?): {error}"
            ) from error
    return stored


def check_weights_match(backbone, shards, description):
    """Raises before anything is assigned if the files' tensors are not exactly the model's.

    Keras keys entries by layer names, not variable paths, so this compares the
    tensor counts per shape and names the tensors that have no counterpart.
    """
    stored = _stored_shapes(shards, description)
    expected = [(v.path, tuple(v.shape)) for v in backbone.weights]
    stored_counts = collections.Counter(tuple(shape) for _, shape in stored)
    expected_counts = collections.Counter(shape for _, shape in expected)
    if stored_counts == expected_counts:
        return
    extra = [f"{name} {tuple(shape)}" for name, shape in stored if stored_counts[tuple(shape)] > expected_counts[tuple(shape)]]
    missing = [f"{path} {shape}" for path, shape in expected if expected_counts[shape] > stored_counts[shape]]
    raise ValueError(
        f"{description}: the weights do not match {CONFIG_FILE} (the model has {len(expected)} weights, the file "
        f"{len(stored)}). The model expects, without a stored tensor of that shape: {missing[:4]}; stored "
        f"tensors no weight of the model has the shape of: {extra[:4]}."
    )


def _keras_hub_object(class_name, config):
    return {"module": _KERAS_HUB[class_name], "class_name": class_name, "config": config,
            "registered_name": f"keras_hub>{class_name}"}


def backbone_json(backbone):
    """`config.json` for `backbone`, naming keras-hub's classes. A `query_pre_attn_scalar` keras-hub can express
    becomes its `query_head_dim_normalize`; one it cannot is kept, and the config names our class, so that
    keras-hub refuses it by name rather than load a model that computes something else."""
    config = backbone.get_config()
    if backbone.vision_encoder is not None:
        config["vision_encoder"] = _keras_hub_object("Gemma3VisionEncoder", backbone.vision_encoder.get_config())
    scalar = config.pop("query_pre_attn_scalar")
    if scalar is None:
        return _keras_hub_object("Gemma3Backbone", config)
    if scalar in (backbone.head_dim, backbone.hidden_dim / backbone.num_query_heads):
        config["query_head_dim_normalize"] = scalar == backbone.head_dim
        return _keras_hub_object("Gemma3Backbone", config)
    return {"module": "gemma3_tf.backbone", "class_name": "Gemma3Backbone",
            "config": {**config, "query_pre_attn_scalar": scalar}, "registered_name": _BACKBONE_NAMES[1]}


def tokenizer_json(tokenizer):
    config = tokenizer.get_config()
    config.update(config_file=TOKENIZER_CONFIG_FILE, proto=None)
    config.pop("sequence_length", None)
    return _keras_hub_object("Gemma3Tokenizer", config)


def image_converter_json(converter):
    """keras-hub's ImageConverter doing what ours does: resize without cropping, then x / 127.5 - 1."""
    config = {k: v for k, v in converter.get_config().items() if k in _LAYER_KEYS}
    config.update(image_size=[converter.image_size, converter.image_size], scale=1 / 127.5, offset=-1.0,
                  interpolation="bilinear", antialias=False, crop_to_aspect_ratio=False, pad_to_aspect_ratio=False)
    return _keras_hub_object("Gemma3ImageConverter", config)


def preprocessor_json(preprocessor):
    config = {k: v for k, v in preprocessor.get_config().items() if k not in ("tokenizer", "image_converter")}
    config.update(
        tokenizer=tokenizer_json(preprocessor.tokenizer),
        image_converter=(None if preprocessor.image_converter is None
                         else image_converter_json(preprocessor.image_converter)),
        config_file=PREPROCESSOR_CONFIG_FILE,
    )
    return _keras_hub_object("Gemma3CausalLMPreprocessor", config)


def _write_json(path, value):
    with open(path, "w") as file:
        json.dump(value, file, indent=4)


def save_backbone(backbone, preset_dir, max_shard_size=10, merge_lora=True):
    """Writes `config.json`, `metadata.json` and the weights (sharded above `max_shard_size` GB).

    With LoRA enabled, Keras merges the adapters into the kernels; `merge_lora=False` instead writes the base
    weights and the adapters apart (LORA_FILE).
    """
    adapters = lora_weights(backbone)
    if merge_lora or not adapters:
        _save_backbone(backbone, preset_dir, max_shard_size)
        return
    # With the second factors at zero, the merged kernels Keras writes are the base kernels exactly.
    factors_b = [weight for weight in adapters if weight.path.endswith("lora_kernel_b")]
    values = [weight.numpy() for weight in factors_b]
    try:
        for weight in factors_b:
            weight.assign(tf.zeros(weight.shape, weight.dtype))
        _save_backbone(backbone, preset_dir, max_shard_size)
    finally:
        for weight, value in zip(factors_b, values):
            weight.assign(value)
    save_lora(backbone, os.path.join(preset_dir, LORA_FILE))


def _save_backbone(backbone, preset_dir, max_shard_size):
    os.makedirs(preset_dir, exist_ok=True)
    _write_json(os.path.join(preset_dir, CONFIG_FILE), backbone_json(backbone))
    size_gb = sum(math.prod(v.shape) * tf.as_dtype(v.dtype).size for v in backbone.weights) / 1024**3
    _write_json(os.path.join(preset_dir, METADATA_FILE), {
        "keras_version": keras.version(),
        "parameter_count": backbone.count_params(),
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        "tasks": ["CausalLM"],
    })
    if max_shard_size is not None and size_gb > max_shard_size:
        backbone.save_weights(os.path.join(preset_dir, SHARDED_WEIGHTS_FILE), max_shard_size=max_shard_size)
    else:
        backbone.save_weights(os.path.join(preset_dir, WEIGHTS_FILE))


def save_tokenizer(tokenizer, preset_dir):
    """Writes `tokenizer.json` and `assets/tokenizer/vocabulary.spm`."""
    asset_dir = os.path.join(preset_dir, os.path.dirname(VOCABULARY_FILE))
    os.makedirs(asset_dir, exist_ok=True)
    _write_json(os.path.join(preset_dir, TOKENIZER_CONFIG_FILE), tokenizer_json(tokenizer))
    tokenizer.save_assets(asset_dir)


def save_preprocessor(preprocessor, preset_dir):
    """Writes `preprocessor.json`, the tokenizer's files and, with vision, `image_converter.json`."""
    save_tokenizer(preprocessor.tokenizer, preset_dir)
    _write_json(os.path.join(preset_dir, PREPROCESSOR_CONFIG_FILE), preprocessor_json(preprocessor))
    if preprocessor.image_converter is not None:
        _write_json(os.path.join(preset_dir, IMAGE_CONVERTER_CONFIG_FILE),
                    image_converter_json(preprocessor.image_converter))


def layers_with_weights(backbone):
    """The backbone's layers that hold weights, in keras-hub's order: its `.lora.h5` files name layers by their
    index here (names repeat across blocks)."""
    return [layer for layer in backbone._flatten_layers(include_self=False) if layer.weights]


def save_lora_weights(backbone, filepath):
    """keras-hub's `Backbone.save_lora_weights` format: `lora/rank`, then `lora/<layer index>` holding
    `lora_kernel_a` and `lora_kernel_b`. Written with Keras' own H5 store, the one keras-hub writes and reads
    them with (Keras has no public API for it), so the two agree byte for byte in layout."""
    from keras.src.saving.saving_lib import H5IOStore

    if not getattr(backbone, "_lora_enabled_layers", None):
        raise ValueError("The model has no LoRA adapters: call `enable_lora(rank)` first.")
    if not str(filepath).endswith(".lora.h5"):
        raise ValueError(f"The filename must end in `.lora.h5`. Received: filepath={filepath}")
    filepath = str(filepath)
    layers = layers_with_weights(backbone)
    with filesystem.local_directory(os.path.dirname(filepath) or ".") as local_dir:
        store = H5IOStore(os.path.join(local_dir, os.path.basename(filepath)), mode="w")
        store.make("lora")["rank"] = backbone.lora_rank
        for index in backbone._lora_enabled_layers:
            entry = store.make(f"lora/{index}")
            entry["lora_kernel_a"], entry["lora_kernel_b"] = layers[index].lora_kernel_a, layers[index].lora_kernel_b
        store.close()


def load_lora_weights(backbone, filepath):
    from keras.src.saving.saving_lib import H5IOStore

    with tempfile.TemporaryDirectory() as scratch:
        store = H5IOStore(filesystem.local_copy(str(filepath), scratch), mode="r")
        try:
            rank = int(store.get("lora")["rank"][()])
            if not getattr(backbone, "_lora_enabled_layers", None):
                backbone.enable_lora(rank)
            elif backbone.lora_rank != rank:
                raise ValueError(f"{filepath} holds LoRA factors of rank {rank}, but this model's LoRA has rank "
                                 f"{backbone.lora_rank}: both must match.")
            layers = layers_with_weights(backbone)
            for index in backbone._lora_enabled_layers:
                entry = store.get(f"lora/{index}")
                layers[index].lora_kernel_a.assign(entry["lora_kernel_a"])
                layers[index].lora_kernel_b.assign(entry["lora_kernel_b"])
        finally:
            store.close()


def lora_weights(backbone):
    """The LoRA factors (`lora_kernel_a`, `lora_kernel_b`) among `backbone`'s weights."""
    return [weight for weight in backbone.weights if weight.path.endswith(("lora_kernel_a", "lora_kernel_b"))]


def save_lora(backbone, filepath):
    """The LoRA factors of `backbone` alone, keyed by weight path, with the rank as an attribute."""
    adapters = lora_weights(backbone)
    if not adapters:
        raise ValueError("The model has no LoRA adapters: call `enable_lora(rank)` first.")
    with h5py.File(filepath, "w") as file:
        file.attrs["rank"] = backbone.lora_rank
        for weight in adapters:
            file[weight.path] = weight.numpy()


def load_lora(backbone, filepath):
    """Enables LoRA at the stored rank (unless enabled) and sets the stored factors."""
    with h5py.File(filepath, "r") as file:
        if not getattr(backbone, "lora_rank", None):
            backbone.enable_lora(int(file.attrs["rank"]))
        stored = {}
        file.visititems(lambda name, item: stored.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    adapters = {weight.path: weight for weight in lora_weights(backbone)}
    if set(stored) != set(adapters):
        raise ValueError(f"{filepath} holds LoRA factors for {sorted(set(stored) - set(adapters))[:3]} and lacks "
                         f"{sorted(set(adapters) - set(stored))[:3]}: it was saved from another model or rank.")
    for path, weight in adapters.items():
        weight.assign(stored[path])
