"""The Gemma 3 presets: architecture, parameter count and where the weights live.

Architectures come from the official Flax configs; parameter counts and
Kaggle handles from the keras-hub preset table.
"""

import types

_COMMON = dict(
    vocabulary_size=262144,
    image_size=896,
    query_head_dim_normalize=True,
    use_query_key_norm=True,
    use_post_ffw_norm=True,
    use_post_attention_norm=True,
    attention_logit_soft_cap=None,
    final_logit_soft_cap=None,
    use_sliding_window_attention=True,
    local_rope_scaling_factor=1.0,
    layer_norm_epsilon=1e-6,
    dropout=0,
)

_SIZES = {
    #        layers heads kv  hidden intermediate head window global_rope
    "270m": (18, 4, 1, 640, 2048, 256, 512, 1.0),
    "1b": (26, 4, 1, 1152, 6912, 256, 512, 1.0),
    "4b": (34, 8, 4, 2560, 10240, 256, 1024, 8.0),
    "12b": (48, 16, 8, 3840, 15360, 256, 1024, 8.0),
    "27b": (62, 32, 16, 5376, 21504, 128, 1024, 8.0),
}

# SigLIP So400m at 896 px, 256 tokens per image; output_dim is the text width.
VISION_ENCODER = dict(
    image_size=896, patch_size=14, num_heads=16, hidden_dim=1152, num_layers=27,
    intermediate_dim=4304, pool_size=4, layer_norm_epsilon=1e-6,
)


def _backbone_config(size):
    layers, heads, kv_heads, hidden, intermediate, head_dim, window, global_rope = _SIZES[size]
    return types.MappingProxyType(dict(
        _COMMON,
        num_layers=layers,
        num_query_heads=heads,
        num_key_value_heads=kv_heads,
        hidden_dim=hidden,
        intermediate_dim=intermediate,
        head_dim=head_dim,
        sliding_window_size=window,
        global_rope_scaling_factor=global_rope,
        # 27B scales queries by 1/sqrt(hidden / heads) = 1/sqrt(168), not 1/sqrt(head_dim).
        query_head_dim_normalize=size != "27b",
    ))


def _preset(name, size, vision, params, kaggle_version):
    return types.MappingProxyType(dict(
        name=name,
        size=size,
        vision=vision,
        params=params,
        instruct="instruct" in name,
        backbone=_backbone_config(size),
        kaggle_handle=f"kaggle://keras/gemma3/keras/{name}/{kaggle_version}",
    ))


PRESETS = types.MappingProxyType({
    preset["name"]: preset
    for preset in (
        _preset("gemma3_270m", "270m", False, 268_098_176, 3),
        _preset("gemma3_instruct_270m", "270m", False, 268_098_176, 4),
        _preset("gemma3_1b", "1b", False, 999_885_952, 3),
        _preset("gemma3_instruct_1b", "1b", False, 999_885_952, 3),
        _preset("gemma3_4b_text", "4b", False, 3_880_099_328, 2),
        _preset("gemma3_instruct_4b_text", "4b", False, 3_880_099_328, 3),
        _preset("gemma3_4b", "4b", True, 4_299_915_632, 1),
        _preset("gemma3_instruct_4b", "4b", True, 4_299_915_632, 1),
        _preset("gemma3_12b_text", "12b", False, 11_765_788_416, 3),
        _preset("gemma3_instruct_12b_text", "12b", False, 11_765_788_416, 3),
        _preset("gemma3_12b", "12b", True, 12_187_079_280, 2),
        _preset("gemma3_instruct_12b", "12b", True, 12_187_079_280, 2),
        _preset("gemma3_27b_text", "27b", False, 27_009_002_240, 4),
        _preset("gemma3_instruct_27b_text", "27b", False, 27_009_002_240, 3),
        _preset("gemma3_27b", "27b", True, 27_432_062_576, 2),
        _preset("gemma3_instruct_27b", "27b", True, 27_432_062_576, 2),
    )
})
