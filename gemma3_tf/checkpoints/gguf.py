"""Gemma 3 text weights from a llama.cpp GGUF file, dequantized to float32 with the `gguf` package.

llama.cpp stores matrices as (out, in) after dequantization, norms as `1 + w`
(it folds Gemma's `1 +` into the weight), no output projection (tied) and
neither the local RoPE base nor the query scale: those come from Gemma 3's
fixed design, as in llama.cpp itself.
"""

import os

import gguf
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from gemma3_tf.checkpoints import layouts
from gemma3_tf.checkpoints.gguf_tokenizer import sentencepiece_proto_from_gguf

ARCHITECTURE = "gemma3"

# GGUF block tensor -> (our weight under decoder_block_{i}/, layout conversion)
_BLOCK_TENSORS = {
    "attn_norm": ("pre_attention_norm/scale", layouts.PLUS_ONE),
    "attn_q": ("attention/query/kernel", layouts.HEADS_IN),
    "attn_k": ("attention/key/kernel", layouts.HEADS_IN),
    "attn_v": ("attention/value/kernel", layouts.HEADS_IN),
    "attn_q_norm": ("attention/query_norm/scale", layouts.PLUS_ONE),
    "attn_k_norm": ("attention/key_norm/scale", layouts.PLUS_ONE),
    "attn_output": ("attention/attention_output/kernel", layouts.HEADS_OUT),
    "post_attention_norm": ("post_attention_norm/scale", layouts.PLUS_ONE),
    "ffn_norm": ("pre_ffw_norm/scale", layouts.PLUS_ONE),
    "ffn_gate": ("ffw_gating/kernel", layouts.TRANSPOSE),
    "ffn_up": ("ffw_gating_2/kernel", layouts.TRANSPOSE),
    "ffn_down": ("ffw_linear/kernel", layouts.TRANSPOSE),
    "post_ffw_norm": ("post_ffw_norm/scale", layouts.PLUS_ONE),
}


def open_gguf(path):
    """A `gguf.GGUFReader` for `path`, with clear errors for missing, truncated or foreign files."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as error:  # gguf raises ValueError/IndexError/struct errors on a damaged file
        raise ValueError(f"{path} is not a readable GGUF file (truncated or corrupt?): {error}") from error
    architecture = _field(reader, "general.architecture")
    if architecture != ARCHITECTURE:
        raise ValueError(
            f"{path}: GGUF architecture `general.architecture` is {architecture!r}; only {ARCHITECTURE!r} "
            "(Gemma 3 text) is supported."
        )
    return reader


def _field(reader, key, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def backbone_config(reader):
    """Gemma3Backbone constructor arguments read from the GGUF metadata."""
    prefix = ARCHITECTURE + "."

    def required(key):
        value = _field(reader, prefix + key)
        if value is None:
            raise ValueError(f"GGUF metadata lacks `{prefix + key}`, needed for the model configuration.")
        return value

    num_layers = int(required("block_count"))
    hidden_dim = int(required("embedding_length"))
    num_query_heads = int(required("attention.head_count"))
    head_dim = int(_field(reader, prefix + "attention.key_length", hidden_dim // num_query_heads))
    return dict(
        vocabulary_size=len(reader.fields["tokenizer.ggml.tokens"].data),
        image_size=896,
        num_layers=num_layers,
        num_query_heads=num_query_heads,
        num_key_value_heads=int(required("attention.head_count_kv")),
        hidden_dim=hidden_dim,
        intermediate_dim=int(required("feed_forward_length")),
        head_dim=head_dim,
        # llama.cpp's rule: only the 62-layer 27B scales queries by hidden / heads.
        query_head_dim_normalize=num_layers != 62,
        use_query_key_norm=True,
        use_post_ffw_norm=True,
        use_post_attention_norm=True,
        use_sliding_window_attention=True,
        sliding_window_size=int(required("attention.sliding_window")),
        local_rope_scaling_factor=1.0,
        global_rope_scaling_factor=float(_field(reader, prefix + "rope.scaling.factor", 1.0)),
        layer_norm_epsilon=float(_field(reader, prefix + "attention.layer_norm_rms_epsilon", 1e-6)),
    )


def _target(name):
    """Our weight path and layout conversion for a GGUF tensor name, or None if we do not use it."""
    if name == "token_embd.weight":
        return "token_embedding/embeddings", layouts.NONE
    if name == "output_norm.weight":
        return "final_normalization/scale", layouts.PLUS_ONE
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _BLOCK_TENSORS:
        path, layout = _BLOCK_TENSORS[parts[2]]
        return f"decoder_block_{parts[1]}/{path}", layout
    return None


# Rows dequantized at a time: the 262144 x 640 embedding would otherwise need ~2 GB of
# float32 temporaries (gguf's dequantizer, then the tensor handed to TensorFlow) at its peak.
_CHUNK_ROWS = 16384


def _plan(backbone, reader):
    """[(tensor, variable, layout)] for every tensor of `reader`, validated before anything is assigned."""
    variables = {variable.path: variable for variable in backbone.weights}
    plan, covered = [], set()
    for tensor in reader.tensors:
        target = _target(tensor.name)
        if target is None:
            raise ValueError(f"GGUF tensor `{tensor.name}` has no place in a Gemma 3 text model.")
        path, layout = target
        if path not in variables:
            raise ValueError(
                f"GGUF tensor `{tensor.name}` maps to `{path}`, which this model does not have "
                f"(the configuration has {backbone.num_layers} layers)."
            )
        variable = variables[path]
        stored_shape = tuple(int(size) for size in reversed(tensor.shape))  # GGUF lists dims innermost first
        if stored_shape != layouts.expected_shape(tuple(variable.shape), layout):
            raise ValueError(
                f"GGUF tensor `{tensor.name}` has shape {stored_shape} (llama.cpp's layout); "
                f"`{path}` expects {tuple(variable.shape)}."
            )
        plan.append((tensor, variable, layout))
        covered.add(path)
    missing = sorted(set(variables) - covered)
    if missing:
        raise ValueError(f"The GGUF file lacks {len(missing)} weights of the model, e.g. {missing[:3]}.")
    return plan


def _dequantize(tensor, rows=slice(None)):
    try:
        return np.asarray(gguf.quants.dequantize(tensor.data[rows], tensor.tensor_type), "float32")
    except NotImplementedError as error:
        raise ValueError(
            f"GGUF tensor `{tensor.name}` uses quantization {tensor.tensor_type.name}, "
            f"which the gguf package cannot dequantize: {error}"
        ) from error


def load_weights(backbone, reader, progress=True):
    """Dequantizes every tensor of `reader` into `backbone`; all weights must be covered exactly once."""
    for tensor, variable, layout in tqdm(
        _plan(backbone, reader), desc="Dequantizing GGUF", unit="tensor", disable=not progress
    ):
        if layout == layouts.NONE and variable.shape[0] > _CHUNK_ROWS:
            # Rows scattered into the TF variable behind the Keras one: a slice `assign` would first
            # read the variable, and writing to a buffer that is also read copies all of it.
            for start in range(0, variable.shape[0], _CHUNK_ROWS):
                rows = _dequantize(tensor, slice(start, start + _CHUNK_ROWS))
                variable.value.scatter_update(
                    tf.IndexedSlices(tf.cast(rows, variable.dtype), tf.range(start, start + len(rows)))
                )
        else:
            variable.assign(layouts.to_keras(_dequantize(tensor), layout, tuple(variable.shape)))


class GGUFCheckpoint:
    """A `.gguf` file: configuration, weights and tokenizer all come from it, parsed once.

    The configuration and the tokenizer are read on opening; then the reader's vocabulary
    arrays (about 0.65 GB of numpy views for 262k pieces) are dropped, so they are not held
    while the weights are dequantized.
    """

    format = "gguf"

    def __init__(self, path):
        self.path = path
        self.reader = open_gguf(path)
        self._config = backbone_config(self.reader)
        try:
            self._tokenizer_proto = sentencepiece_proto_from_gguf(self.reader)
        except ValueError as error:  # a file without a tokenizer still gives a backbone
            self._tokenizer_proto = error
        for name in [name for name in self.reader.fields if name.startswith("tokenizer.ggml.")]:
            if self.reader.fields[name].types[0] == gguf.GGUFValueType.ARRAY:
                del self.reader.fields[name]

    def backbone_config(self):
        return dict(self._config)

    def load_weights(self, backbone, progress=True):
        load_weights(backbone, self.reader, progress=progress)

    def tokenizer_proto(self):
        if isinstance(self._tokenizer_proto, ValueError):
            raise self._tokenizer_proto
        return self._tokenizer_proto
