from keras import ops


def rotation(positions, head_dim, max_wavelength, scaling_factor=1.0, dtype="float32"):
    """RoPE's (cos, sin) [B, T, 1, H] at positions [T] or [B, T] (NeoX rotate-half layout), for
    `apply_rotary_embedding`. A cached pass makes it once for the queries and keys of all layers of one wavelength
    and scaling (`Gemma3Backbone.forward`): each copy is about 45 more graph nodes, run on every decode step.

    Linear RoPE scaling divides the inverse frequencies by `scaling_factor` (Gemma 3's global layers use 8.0 in
    the 4B/12B/27B models). Angles are computed in float32; only cos/sin are cast to `dtype`.
    """
    exponents = ops.arange(0, head_dim, 2, dtype="float32") / head_dim
    inverse_freq = ops.power(float(max_wavelength), -exponents) / scaling_factor
    positions = ops.cast(positions, "float32")
    if len(positions.shape) == 1:
        positions = positions[None, :]
    angles = positions[:, :, None] * inverse_freq[None, None, :]  # [B, T, H/2]
    angles = ops.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, H]
    return ops.cast(ops.cos(angles), dtype), ops.cast(ops.sin(angles), dtype)


def apply_rotary_embedding(x, rope):
    """Rotates `x` [B, T, N, H] by `rope`, the `rotation` (cos, sin) of its positions."""
    cos, sin = rope
    x1, x2 = ops.split(x, 2, axis=-1)
    rotated_half = ops.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated_half * sin
