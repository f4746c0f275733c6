from keras import ops


def apply_rotary_embedding(x, positions, max_wavelength, scaling_factor=1.0):
    """Rotates `x` [B, T, N, H] by its positions [T] or [B, T] (NeoX rotate-half layout).

    Linear RoPE scaling divides the inverse frequencies by `scaling_factor`
    (Gemma 3's global layers use 8.0 in the 4B/12B/27B models). Angles are
    computed in float32; only cos/sin are cast to the compute dtype.
    """
    head_dim = x.shape[-1]
    exponents = ops.arange(0, head_dim, 2, dtype="float32") / head_dim
    inverse_freq = ops.power(float(max_wavelength), -exponents) / scaling_factor
    positions = ops.cast(positions, "float32")
    if len(positions.shape) == 1:
        positions = positions[None, :]
    angles = positions[:, :, None] * inverse_freq[None, None, :]  # [B, T, H/2]
    angles = ops.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, H]
    cos = ops.cast(ops.cos(angles), x.dtype)
    sin = ops.cast(ops.sin(angles), x.dtype)
    x1, x2 = ops.split(x, 2, axis=-1)
    rotated_half = ops.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated_half * sin
