"""Checks on the inputs of the backbone and causal LM, with messages that name the field.

Shapes, ranks and dtypes are checked whenever they are known. Values (id
ranges, index consistency) are checked only for concrete inputs (numpy or
eager tensors): inside a traced graph they are unknown, and XLA drops asserts.
"""

import numpy as np
import tensorflow as tf

from gemma3_tf.refusals import InputError

TEXT_KEYS = ("token_ids", "padding_mask")
VISION_KEYS = ("images", "vision_mask", "vision_indices")


def _shape(value):
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else np.shape(value)


def _compatible(shape, expected):
    """Equal where both are known (None is a dynamic dimension)."""
    return all(a is None or b is None or a == b for a, b in zip(shape, expected))


def _dtype_kind(value):
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return np.asarray(value).dtype.kind
    name = getattr(dtype, "name", str(dtype))
    if name == "bool":
        return "b"
    if "float" in name:
        return "f"
    if "int" in name:
        return "i"
    return "?"


def _concrete(value):
    """The value as numpy, or None when it is symbolic (a graph or Keras tensor)."""
    if isinstance(value, (np.ndarray, list, tuple, int)):
        return np.asarray(value)
    if tf.is_tensor(value) and tf.executing_eagerly():
        return value.numpy()
    return None


def _check(field, value, rank, kinds, kind_text):
    shape = _shape(value)
    if len(shape) != rank:
        raise InputError("invalid_shape", field, f"`{field}` must have rank {rank}; got shape {shape}.")
    if _dtype_kind(value) not in kinds:
        raise InputError("invalid_dtype", field,
                         f"`{field}` must be {kind_text}; got dtype {getattr(value, 'dtype', type(value))}.")
    return shape


def validate_inputs(inputs, vocabulary_size, image_size=None, num_vision_tokens_per_image=None):
    """Raises an `InputError` (a ValueError) naming the field when `inputs` does not fit the model."""
    expected = TEXT_KEYS + (VISION_KEYS if image_size is not None else ())
    if not isinstance(inputs, dict):
        raise InputError("invalid_inputs", "inputs",
                         f"Inputs must be a dict with keys {list(expected)}; got {type(inputs).__name__}.")
    missing = [key for key in expected if key not in inputs]
    unexpected = [key for key in inputs if key not in expected]
    if missing or unexpected:
        note = " (this model has no vision encoder)" if image_size is None and set(unexpected) & set(VISION_KEYS) else ""
        raise InputError(
            "invalid_inputs", "inputs",
            f"Inputs must have exactly the keys {list(expected)}; missing {missing}, unexpected {unexpected}{note}."
        )

    token_shape = _check("token_ids", inputs["token_ids"], 2, "iu", "an integer tensor [batch, sequence]")
    shapes = {"padding_mask": _check("padding_mask", inputs["padding_mask"], 2, "iub", "an int or bool tensor")}
    if image_size is not None:
        shapes["vision_mask"] = _check("vision_mask", inputs["vision_mask"], 2, "iub", "an int or bool tensor")
        image_shape = _check("images", inputs["images"], 5, "f", "a float tensor scaled to [-1, 1]")
        index_shape = _check("vision_indices", inputs["vision_indices"], 2, "iu", "an integer tensor")
        if not _compatible(image_shape[2:], (image_size, image_size, 3)):
            raise InputError(
                "invalid_shape", "images",
                f"`images` must have shape [batch, num_images, {image_size}, {image_size}, 3]; got {image_shape}."
            )
        if None not in (image_shape[1], index_shape[1]) and index_shape[1] != image_shape[1] * num_vision_tokens_per_image:
            raise InputError(
                "invalid_shape", "vision_indices",
                f"`vision_indices` must have num_images * {num_vision_tokens_per_image} = "
                f"{image_shape[1] * num_vision_tokens_per_image} columns for `images` of shape {image_shape}; "
                f"got shape {index_shape}."
            )
        shapes["images (batch)"] = image_shape[:1] + token_shape[1:]
        shapes["vision_indices (batch)"] = index_shape[:1] + token_shape[1:]
    for field, shape in shapes.items():
        if not _compatible(shape, token_shape):
            raise InputError("invalid_shape", field.split()[0],
                             f"`{field}` must match `token_ids` of shape {token_shape}; got shape {shape}.")

    _check_values(inputs, vocabulary_size, image_size)


def _check_values(inputs, vocabulary_size, image_size):
    token_ids = _concrete(inputs["token_ids"])
    if token_ids is not None and token_ids.size and (token_ids.min() < 0 or token_ids.max() >= vocabulary_size):
        bad = token_ids[(token_ids < 0) | (token_ids >= vocabulary_size)]
        raise InputError(
            "invalid_value", "token_ids",
            f"`token_ids` must lie in [0, {vocabulary_size}) (the vocabulary); got {bad[:5].tolist()}."
        )
    if image_size is None:
        return
    images = _concrete(inputs["images"])
    if images is not None and images.size and (images.min() < -1.001 or images.max() > 1.001):
        raise InputError(
            "invalid_value", "images",
            f"`images` must be scaled to [-1, 1] (pixel / 127.5 - 1); got values in "
            f"[{images.min():.3g}, {images.max():.3g}]."
        )
    indices, vision_mask = _concrete(inputs["vision_indices"]), _concrete(inputs["vision_mask"])
    if indices is None or vision_mask is None:
        return
    length = vision_mask.shape[1]
    if indices.size and (indices.min() < 0 or indices.max() >= length):
        raise InputError(
            "invalid_value", "vision_indices",
            f"`vision_indices` must lie in [0, {length}) (the sequence length); "
            f"got values in [{indices.min()}, {indices.max()}]."
        )
    for row, (row_indices, row_mask) in enumerate(zip(indices, vision_mask.astype(bool))):
        placed = np.unique(row_indices[row_indices > 0])
        masked = np.flatnonzero(row_mask)
        if placed.shape != masked.shape or (placed != masked).any():
            raise InputError(
                "invalid_value", "vision_indices",
                f"`vision_indices` and `vision_mask` disagree in row {row}: the non-zero indices "
                f"{_ranges(placed)} must be exactly the positions where `vision_mask` is set {_ranges(masked)}."
            )


def _ranges(positions):
    """Compact text for a sorted index list: [3-6, 9]."""
    if not len(positions):
        return "[]"
    runs, start = [], positions[0]
    for previous, current in zip(positions, list(positions[1:]) + [None]):
        if current != previous + 1:
            runs.append(f"{start}-{previous}" if previous != start else f"{start}")
            start = current
    return "[" + ", ".join(runs) + "]"
