"""Hugging Face transformers checkpoints of Gemma 3, read and written.

A directory with `config.json` (`model_type` `gemma3_text` for Gemma3ForCausalLM,
`gemma3` for Gemma3ForConditionalGeneration), `model.safetensors` or shards
listed in `model.safetensors.index.json`, and `tokenizer.model`. Missing config
keys take transformers' defaults, as transformers does (Hub configs of the
multimodal models leave most of them out).

Two behaviours of transformers' Gemma 3 (5.x) decide how configs map: it never
applies `attn_logit_softcapping`, and Gemma3ForConditionalGeneration does not
apply `final_logit_softcapping`; the loaded model does what transformers does.
Released Gemma 3 configs set both caps to null.
"""

import json
import math
import os

import keras
import numpy as np
import tensorflow as tf
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from gemma3_tf import architecture, filesystem
from gemma3_tf.checkpoints import layouts

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.model"
TEXT_MODEL_TYPE = "gemma3_text"
MULTIMODAL_MODEL_TYPE = "gemma3"

# transformers' defaults (Gemma3TextConfig, Gemma3Config, SiglipVisionConfig in 5.24).
_TEXT_DEFAULTS = dict(
    vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
    num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
    query_pre_attn_scalar=256, sliding_window=4096, final_logit_softcapping=None, attn_logit_softcapping=None,
    tie_word_embeddings=True, use_bidirectional_attention=False,
)
_MULTIMODAL_DEFAULTS = dict(mm_tokens_per_image=256, boi_token_index=255999, eoi_token_index=256000,
                            image_token_index=262144)
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        image_size=224, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
                        vision_use_head=True)
_SLIDING, _FULL = "sliding_attention", "full_attention"

# Prefixes used by transformers 4.x (the Hub checkpoints) and 5.x, tried in order.
_TEXT_PREFIXES = {
    TEXT_MODEL_TYPE: ("model.", ""),
    MULTIMODAL_MODEL_TYPE: ("language_model.model.", "model.language_model."),
}
_VISION_PREFIXES = ("vision_tower.vision_model.", "vision_tower.", "model.vision_tower.vision_model.",
                    "model.vision_tower.")
_PROJECTOR_PREFIXES = ("multi_modal_projector.", "model.multi_modal_projector.")

_BLOCK_TENSORS = {  # HF name under layers.{i}. -> (our weight under decoder_block_{i}/, layout)
    "input_layernorm.weight": ("pre_attention_norm/scale", layouts.NONE),
    "self_attn.q_proj.weight": ("attention/query/kernel", layouts.HEADS_IN),
    "self_attn.k_proj.weight": ("attention/key/kernel", layouts.HEADS_IN),
    "self_attn.v_proj.weight": ("attention/value/kernel", layouts.HEADS_IN),
    "self_attn.q_norm.weight": ("attention/query_norm/scale", layouts.NONE),
    "self_attn.k_norm.weight": ("attention/key_norm/scale", layouts.NONE),
    "self_attn.o_proj.weight": ("attention/attention_output/kernel", layouts.HEADS_OUT),
    "post_attention_layernorm.weight": ("post_attention_norm/scale", layouts.NONE),
    "pre_feedforward_layernorm.weight": ("pre_ffw_norm/scale", layouts.NONE),
    "mlp.gate_proj.weight": ("ffw_gating/kernel", layouts.TRANSPOSE),
    "mlp.up_proj.weight": ("ffw_gating_2/kernel", layouts.TRANSPOSE),
    "mlp.down_proj.weight": ("ffw_linear/kernel", layouts.TRANSPOSE),
    "post_feedforward_layernorm.weight": ("post_ffw_norm/scale", layouts.NONE),
}
_VISION_BLOCK_TENSORS = {  # HF name under encoder.layers.{i}. -> ours under image_encoder/encoder_block_{i}/
    "layer_norm1.weight": ("layer_norm_1/gamma", layouts.NONE),
    "layer_norm1.bias": ("layer_norm_1/beta", layouts.NONE),
    "self_attn.q_proj.weight": ("multi_head_attention/query_proj/kernel", layouts.TRANSPOSE),
    "self_attn.q_proj.bias": ("multi_head_attention/query_proj/bias", layouts.NONE),
    "self_attn.k_proj.weight": ("multi_head_attention/key_proj/kernel", layouts.TRANSPOSE),
    "self_attn.k_proj.bias": ("multi_head_attention/key_proj/bias", layouts.NONE),
    "self_attn.v_proj.weight": ("multi_head_attention/value_proj/kernel", layouts.TRANSPOSE),
    "self_attn.v_proj.bias": ("multi_head_attention/value_proj/bias", layouts.NONE),
    "self_attn.out_proj.weight": ("multi_head_attention/out_proj/kernel", layouts.TRANSPOSE),
    "self_attn.out_proj.bias": ("multi_head_attention/out_proj/bias", layouts.NONE),
    "layer_norm2.weight": ("layer_norm_2/gamma", layouts.NONE),
    "layer_norm2.bias": ("layer_norm_2/beta", layouts.NONE),
    "mlp.fc1.weight": ("mlp_dense_1/kernel", layouts.TRANSPOSE),
    "mlp.fc1.bias": ("mlp_dense_1/bias", layouts.NONE),
    "mlp.fc2.weight": ("mlp_dense_2/kernel", layouts.TRANSPOSE),
    "mlp.fc2.bias": ("mlp_dense_2/bias", layouts.NONE),
}
_VISION_TENSORS = {  # HF name under the vision prefix -> ours
    "embeddings.patch_embedding.weight": ("image_encoder/encoder_embeddings/embedding_conv/kernel", layouts.CONV),
    "embeddings.patch_embedding.bias": ("image_encoder/encoder_embeddings/embedding_conv/bias", layouts.NONE),
    "embeddings.position_embedding.weight": (
        "image_encoder/encoder_embeddings/position_embedding/embeddings", layouts.NONE),
    "post_layernorm.weight": ("image_encoder/encoder_layer_norm/gamma", layouts.NONE),
    "post_layernorm.bias": ("image_encoder/encoder_layer_norm/beta", layouts.NONE),
}
_PROJECTOR_TENSORS = {
    "mm_soft_emb_norm.weight": ("vision_output_encoder/vision_soft_embedding_norm/scale", layouts.NONE),
    "mm_input_projection_weight": ("vision_output_encoder/vision_input_projection/kernel", layouts.NONE),
}


def _unsupported(description, key, value, expected):
    return ValueError(f"{description}: `{key}` is {value!r}; gemma3_tf supports Gemma 3 with {expected}.")


def _rope(text, layer_type, legacy_theta, description):
    """(theta, linear factor) of one layer type, from `rope_parameters` (5.x) or the 4.x keys."""
    params = (text.get("rope_parameters") or {}).get(layer_type)
    if params is None:  # transformers 4.x keys
        theta = text.get("rope_theta", architecture.GLOBAL_ROPE_WAVELENGTH) if layer_type == _FULL else text.get(
            "rope_local_base_freq", architecture.LOCAL_ROPE_WAVELENGTH)
        params = dict(text.get("rope_scaling") or {}) if layer_type == _FULL else {}
        params["rope_theta"] = theta
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "linear"):
        raise _unsupported(description, f"rope_type of {layer_type}", rope_type, "default or linear RoPE")
    theta = float(params.get("rope_theta", legacy_theta))
    if theta != legacy_theta:
        raise _unsupported(description, f"rope_theta of {layer_type}", theta, f"{legacy_theta:g} there")
    return float(params.get("factor", 1.0)) if rope_type == "linear" else 1.0


def backbone_config(config, description="config.json"):
    """Gemma3Backbone arguments (the vision encoder's as a dict) for a transformers Gemma 3 config."""
    model_type = config.get("model_type")
    if model_type not in (TEXT_MODEL_TYPE, MULTIMODAL_MODEL_TYPE):
        raise ValueError(
            f"{description}: `model_type` is {model_type!r}; expected {TEXT_MODEL_TYPE!r} (Gemma3ForCausalLM) "
            f"or {MULTIMODAL_MODEL_TYPE!r} (Gemma3ForConditionalGeneration)."
        )
    multimodal = model_type == MULTIMODAL_MODEL_TYPE
    text = {**_TEXT_DEFAULTS, **(config.get("text_config") or {} if multimodal else config)}
    for key, expected in (("hidden_activation", "gelu_pytorch_tanh"), ("tie_word_embeddings", True),
                          ("use_bidirectional_attention", False)):
        if text[key] != expected:
            raise _unsupported(description, key, text[key], f"{key}={expected!r}")
    layers, heads, hidden = text["num_hidden_layers"], text["num_attention_heads"], text["hidden_size"]
    pattern = text.get("sliding_window_pattern", architecture.SLIDING_WINDOW_PATTERN)
    layer_types = text.get("layer_types") or [_FULL if (i + 1) % pattern == 0 else _SLIDING for i in range(layers)]
    ours = [_SLIDING if local else _FULL for local in architecture.layer_types(layers)]
    if list(layer_types) != ours:
        raise _unsupported(description, "layer_types", layer_types, "five sliding layers, then one full, repeated")
    query_scale = text["query_pre_attn_scalar"]
    vision_encoder, image_size = None, None
    if multimodal:
        vision = {**_VISION_DEFAULTS, **(config.get("vision_config") or {})}
        if vision["vision_use_head"]:
            raise _unsupported(description, "vision_config.vision_use_head", True, "vision_use_head=false")
        tokens_per_image = config.get("mm_tokens_per_image", _MULTIMODAL_DEFAULTS["mm_tokens_per_image"])
        patches_per_side = vision["image_size"] // vision["patch_size"]
        pool_size = patches_per_side // math.isqrt(tokens_per_image)
        if pool_size * math.isqrt(tokens_per_image) != patches_per_side:
            raise _unsupported(description, "mm_tokens_per_image", tokens_per_image,
                               f"a square number dividing the {patches_per_side}x{patches_per_side} patch grid")
        image_size = vision["image_size"]
        vision_encoder = dict(
            image_size=image_size, patch_size=vision["patch_size"], num_heads=vision["num_attention_heads"],
            hidden_dim=vision["hidden_size"], num_layers=vision["num_hidden_layers"],
            intermediate_dim=vision["intermediate_size"], output_dim=hidden, pool_size=pool_size,
            layer_norm_epsilon=vision["layer_norm_eps"],
        )
    return dict(
        vocabulary_size=text["vocab_size"],
        image_size=image_size,
        num_layers=layers,
        num_query_heads=heads,
        num_key_value_heads=text["num_key_value_heads"],
        hidden_dim=hidden,
        intermediate_dim=text["intermediate_size"],
        head_dim=text["head_dim"],
        # keras-hub's two rules where one gives the value, so that its presets can hold the model.
        query_head_dim_normalize=query_scale != hidden / heads,
        query_pre_attn_scalar=None if query_scale in (text["head_dim"], hidden / heads) else query_scale,
        use_query_key_norm=True,
        use_post_ffw_norm=True,
        use_post_attention_norm=True,
        attention_logit_soft_cap=None,  # transformers ignores attn_logit_softcapping
        final_logit_soft_cap=None if multimodal else text["final_logit_softcapping"],
        use_sliding_window_attention=True,
        sliding_window_size=text["sliding_window"],
        local_rope_scaling_factor=_rope(text, _SLIDING, architecture.LOCAL_ROPE_WAVELENGTH, description),
        global_rope_scaling_factor=_rope(text, _FULL, architecture.GLOBAL_ROPE_WAVELENGTH, description),
        layer_norm_epsilon=text["rms_norm_eps"],
        vision_encoder=vision_encoder,
    )


def weight_map(backbone, text_prefix, vision_prefix=None, projector_prefix=None):
    """{HF tensor name: (our variable, layout)} for every weight of `backbone`."""
    variables = {v.path: v for v in backbone.weights}
    names = {f"{text_prefix}embed_tokens.weight": ("token_embedding/embeddings", layouts.NONE),
             f"{text_prefix}norm.weight": ("final_normalization/scale", layouts.NONE)}
    for i in range(backbone.num_layers):
        for name, (path, layout) in _BLOCK_TENSORS.items():
            names[f"{text_prefix}layers.{i}.{name}"] = (f"decoder_block_{i}/{path}", layout)
    encoder = backbone.vision_encoder
    if encoder is not None:
        for name, target in _VISION_TENSORS.items():
            names[vision_prefix + name] = target
        for i in range(encoder.num_layers):
            for name, (path, layout) in _VISION_BLOCK_TENSORS.items():
                names[f"{vision_prefix}encoder.layers.{i}.{name}"] = (f"image_encoder/encoder_block_{i}/{path}", layout)
        for name, target in _PROJECTOR_TENSORS.items():
            names[projector_prefix + name] = target
    mapped = {name: (variables[path], layout) for name, (path, layout) in names.items()}
    lora = {path for path in variables if path.endswith(("lora_kernel_a", "lora_kernel_b"))}  # merged by `save`
    unmapped = set(variables) - lora - {v.path for v, _ in mapped.values()}
    assert not unmapped, f"weights without a transformers name: {sorted(unmapped)}"
    return mapped


def _first_prefix(prefixes, keys, suffix):
    return next((prefix for prefix in prefixes if prefix + suffix in keys), prefixes[0])


class HuggingFaceCheckpoint:
    format = "hf"

    def __init__(self, source, config):
        self.source = source
        self.config = config
        self.description = source.description
        self.backbone_config()  # fail early on an unsupported configuration

    def backbone_config(self):
        return backbone_config(self.config, f"{self.description}/{CONFIG_FILE}")

    def _weight_files(self):
        if self.source.exists(WEIGHTS_INDEX_FILE):
            with open(self.source.get_file(WEIGHTS_INDEX_FILE)) as file:
                names = sorted(set(json.load(file)["weight_map"].values()))
        elif self.source.exists(WEIGHTS_FILE):
            names = [WEIGHTS_FILE]
        else:
            raise FileNotFoundError(
                f"{self.description} has a transformers {CONFIG_FILE} but neither {WEIGHTS_FILE} nor "
                f"{WEIGHTS_INDEX_FILE} (only safetensors weights are read, not PyTorch .bin files)."
            )
        return [self.source.get_file(name) for name in names]

    def load_weights(self, backbone, progress=True):
        """Checks every tensor's name and shape first, then assigns: never half-loads."""
        files = self._weight_files()
        handles, located = [], {}
        for path in files:
            try:
                handle = safe_open(path, framework="np")
            except (SafetensorError, OSError) as error:
                raise ValueError(
                    f"{self.description}: {os.path.basename(path)} is not a readable safetensors file "
                    f"(truncated or corrupt?): {error}"
                ) from error
            handles.append(handle)
            for key in handle.keys():
                located[key] = handle
        keys = set(located)
        multimodal = self.config.get("model_type") == MULTIMODAL_MODEL_TYPE
        text_prefix = _first_prefix(_TEXT_PREFIXES[self.config["model_type"]], keys, "embed_tokens.weight")
        vision_prefix = _first_prefix(_VISION_PREFIXES, keys, "embeddings.patch_embedding.weight")
        projector_prefix = _first_prefix(_PROJECTOR_PREFIXES, keys, "mm_input_projection_weight")
        mapping = weight_map(backbone, text_prefix, vision_prefix, projector_prefix)
        missing = sorted(set(mapping) - keys)
        if missing:
            raise ValueError(
                f"{self.description}: {len(missing)} tensors the configuration needs are not in the safetensors "
                f"files, e.g. {missing[:3]}."
            )
        ignored = {"lm_head.weight"} if not multimodal else set()
        unexpected = sorted(keys - set(mapping) - ignored)
        if unexpected:
            raise ValueError(
                f"{self.description}: the safetensors files hold {len(unexpected)} tensors this configuration has "
                f"no place for, e.g. {unexpected[:3]} (does config.json match the weights?)."
            )
        for name, (variable, layout) in mapping.items():
            found = tuple(located[name].get_slice(name).get_shape())
            expected = layouts.expected_shape(tuple(variable.shape), layout)
            if found != tuple(expected):
                raise ValueError(
                    f"{self.description}: tensor `{name}` has shape {found}; the configuration expects "
                    f"{tuple(expected)} (for `{variable.path}`). Does config.json match the weights?"
                )
        for name, (variable, layout) in tqdm(mapping.items(), desc="Loading safetensors", unit="tensor",
                                             disable=not progress):
            array = located[name].get_tensor(name)
            variable.assign(keras.ops.cast(layouts.to_keras(array, layout, tuple(variable.shape)), variable.dtype))

    def tokenizer_proto(self):
        with open(self.source.get_file(TOKENIZER_FILE), "rb") as file:
            return file.read()


def hf_config(backbone, tokenizer=None):
    """transformers' config.json for `backbone` (Gemma3ForCausalLM, or Gemma3ForConditionalGeneration); the
    special token ids are the tokenizer's, or transformers' defaults without one."""
    layer_types = [_SLIDING if local else _FULL
                   for local in architecture.layer_types(backbone.num_layers, backbone.use_sliding_window_attention)]
    global_rope = {"rope_type": "default", "rope_theta": architecture.GLOBAL_ROPE_WAVELENGTH}
    if backbone.global_rope_scaling_factor != 1.0:
        global_rope = {"rope_type": "linear", "factor": backbone.global_rope_scaling_factor,
                       "rope_theta": architecture.GLOBAL_ROPE_WAVELENGTH}
    local_rope = {"rope_type": "default", "rope_theta": architecture.LOCAL_ROPE_WAVELENGTH}
    if backbone.local_rope_scaling_factor != 1.0:
        local_rope = {"rope_type": "linear", "factor": backbone.local_rope_scaling_factor,
                      "rope_theta": architecture.LOCAL_ROPE_WAVELENGTH}
    if backbone.attention_logit_soft_cap is not None:
        raise ValueError("transformers' Gemma 3 does not apply `attention_logit_soft_cap`; this model needs it.")
    text = dict(
        model_type=TEXT_MODEL_TYPE,
        vocab_size=backbone.vocabulary_size,
        hidden_size=backbone.hidden_dim,
        intermediate_size=backbone.intermediate_dim,
        num_hidden_layers=backbone.num_layers,
        num_attention_heads=backbone.num_query_heads,
        num_key_value_heads=backbone.num_key_value_heads,
        head_dim=backbone.head_dim,
        query_pre_attn_scalar=backbone.query_pre_attn_scalar or (
            backbone.head_dim if backbone.query_head_dim_normalize
            else backbone.hidden_dim // backbone.num_query_heads),
        hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=backbone.layer_norm_epsilon,
        sliding_window=backbone.sliding_window_size,
        layer_types=layer_types,
        rope_parameters={_FULL: global_rope, _SLIDING: local_rope},
        final_logit_softcapping=backbone.final_logit_soft_cap,
        attn_logit_softcapping=None,
        max_position_embeddings=131072,
        tie_word_embeddings=True,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,  # transformers' defaults
    )
    if tokenizer is not None:
        text.update(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.end_token_id,
                    bos_token_id=tokenizer.start_token_id)
    dtype = backbone.dtype_policy.variable_dtype
    encoder = backbone.vision_encoder
    if encoder is None:
        return {"architectures": ["Gemma3ForCausalLM"], **text, "dtype": dtype}
    if backbone.final_logit_soft_cap is not None:
        raise ValueError("transformers' Gemma3ForConditionalGeneration does not apply `final_logit_soft_cap`; "
                         "this model needs it.")
    return {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": MULTIMODAL_MODEL_TYPE,
        **_MULTIMODAL_DEFAULTS,
        **({} if tokenizer is None else dict(boi_token_index=tokenizer.start_of_image_token_id,
                                             eoi_token_index=tokenizer.end_of_image_token_id)),
        "mm_tokens_per_image": encoder.num_vision_tokens_per_image,
        "text_config": text,
        "vision_config": dict(
            model_type="siglip_vision_model", hidden_size=encoder.hidden_dim,
            intermediate_size=encoder.intermediate_dim, num_hidden_layers=encoder.num_layers,
            num_attention_heads=encoder.num_heads, image_size=encoder.image_size, patch_size=encoder.patch_size,
            layer_norm_eps=encoder.layer_norm_epsilon, hidden_act="gelu_pytorch_tanh", vision_use_head=False,
        ),
        "tie_word_embeddings": True,
        "dtype": dtype,
    }


def save(backbone, directory, tokenizer=None, max_shard_size=5 * 1024**3, progress=True):
    """Writes `config.json`, safetensors weights (sharded with an index above `max_shard_size` bytes)
    and, with a tokenizer, `tokenizer.model`: a directory transformers' `from_pretrained` loads."""
    config = hf_config(backbone, tokenizer)
    if backbone.vision_encoder is None:
        mapping = weight_map(backbone, "model.")
    else:
        mapping = weight_map(backbone, "language_model.model.", "vision_tower.vision_model.", "multi_modal_projector.")
    # transformers has no LoRA adapters: a kernel with them is written merged (Keras' `kernel` merges).
    merged = {layer._kernel.path: layer for layer in backbone._flatten_layers()
              if getattr(layer, "lora_enabled", False)}
    shards, current, current_size = [], {}, 0
    for name, (variable, layout) in tqdm(mapping.items(), desc="Writing safetensors", unit="tensor",
                                         disable=not progress):
        value = merged[variable.path].kernel if variable.path in merged else variable
        array = np.ascontiguousarray(layouts.from_keras(np.asarray(value), layout))
        if current and current_size + array.nbytes > max_shard_size:
            shards.append(current)
            current, current_size = {}, 0
        current[name] = array
        current_size += array.nbytes
    shards.append(current)
    with filesystem.local_directory(directory) as local_dir:  # safetensors writes local files only
        metadata = {"format": "pt"}
        if len(shards) == 1:
            save_file(shards[0], os.path.join(local_dir, WEIGHTS_FILE), metadata=metadata)
        else:
            index = {"metadata": {"total_size": sum(a.nbytes for shard in shards for a in shard.values())},
                     "weight_map": {}}
            for number, shard in enumerate(shards, 1):
                filename = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, os.path.join(local_dir, filename), metadata=metadata)
                index["weight_map"].update(dict.fromkeys(shard, filename))
            with open(os.path.join(local_dir, WEIGHTS_INDEX_FILE), "w") as file:
                json.dump(index, file, indent=2)
        with open(os.path.join(local_dir, CONFIG_FILE), "w") as file:
            json.dump(config, file, indent=2)
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory)


def save_tokenizer(tokenizer, directory):
    """`tokenizer.model`, the SentencePiece file transformers' Gemma tokenizers load."""
    tf.io.gfile.makedirs(directory)
    with tf.io.gfile.GFile(os.path.join(directory, TOKENIZER_FILE), "wb") as file:
        file.write(tokenizer.proto)
