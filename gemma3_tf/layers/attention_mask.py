"""The attention masks of Gemma 3, computed once per forward pass and shared by all layers."""

import keras
from keras import ops


def image_ids(vision_mask):
    """Numbers each contiguous run of image tokens 1, 2, ...; text tokens get 0. [B, T] -> [B, T]."""
    vision_mask = ops.cast(vision_mask, "int32")
    previous = ops.pad(vision_mask, [(0, 0), (1, 0)])[:, :-1]
    starts = ops.cast(ops.greater(vision_mask, previous), "int32")
    return ops.cumsum(starts, axis=-1) * vision_mask


def compute_attention_mask(
    padding_mask, query_length, start_index=0, vision_mask=None, sliding_window_size=None
):
    """Which keys each query may attend to: a bool tensor [B, T, S].

    Args:
        padding_mask: [B, S], the valid keys (S is the key length, the KV cache
            length during generation).
        query_length: T, the number of queries, at positions `start_index + arange(T)`.
        vision_mask: optional [B, T] over the queries (start_index 0: the whole sequence or a
            prefill): tokens of one image also see each other bidirectionally.
        sliding_window_size: if set, query i sees key j only when |i - j| < window.
    """
    key_length = ops.shape(padding_mask)[1]
    query_positions = ops.arange(query_length, dtype="int32") + start_index
    key_positions = ops.arange(key_length, dtype="int32")
    distance = query_positions[:, None] - key_positions[None, :]  # [T, S]
    mask = ops.greater_equal(distance, 0)[None, :, :]
    if vision_mask is not None:
        ids = image_ids(vision_mask)  # [B, T]; keys past the queries (a cache's room) hold no image
        key_ids = ops.pad(ids, [(0, 0), (0, key_length - query_length)])
        same_image = ops.logical_and(
            ops.equal(ids[:, :, None], key_ids[:, None, :]), ops.greater(ids[:, :, None], 0)
        )
        mask = ops.logical_or(mask, same_image)
    mask = ops.logical_and(mask, ops.cast(padding_mask, "bool")[:, None, :])
    if sliding_window_size is not None:
        mask = ops.logical_and(mask, ops.less(ops.abs(distance), sliding_window_size)[None])
    return mask


@keras.saving.register_keras_serializable(package="gemma3_tf")
class AttentionMasks(keras.layers.Layer):
    """The (global, local) attention masks [B, T, S] of one forward pass, for all decoder blocks.

    A layer, so that the Functional backbone can build them from symbolic inputs (T and S are
    known only when it runs).
    """

    def __init__(self, sliding_window_size, **kwargs):
        super().__init__(**kwargs)
        self.sliding_window_size = sliding_window_size

    def call(self, padding_mask, token_ids, start_index=0, vision_mask=None):
        """padding_mask [B, S] (the valid keys); token_ids [B, T], the queries, at `start_index` on."""
        length = ops.shape(token_ids)[1]
        return (
            compute_attention_mask(padding_mask, length, start_index, vision_mask),
            compute_attention_mask(padding_mask, length, start_index, vision_mask, self.sliding_window_size),
        )

    def compute_output_spec(self, padding_mask, token_ids, start_index=0, vision_mask=None):
        shape = (padding_mask.shape[0], token_ids.shape[1], padding_mask.shape[1])
        return keras.KerasTensor(shape, "bool"), keras.KerasTensor(shape, "bool")

    def get_config(self):
        return {**super().get_config(), "sliding_window_size": self.sliding_window_size}
