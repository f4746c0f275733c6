"""Facts of the Gemma 3 architecture that follow from a configuration, each computed here only.

The backbone, the checkpoint readers and writers, preprocessing, training and the pipelines read
them from here. Free of TensorFlow, so that configuration code and the command line can use it.
"""

# Five sliding-window (local) layers, then one global layer, repeated: layers 5, 11, 17, ... are global.
SLIDING_WINDOW_PATTERN = 6
LOCAL_ROPE_WAVELENGTH = 10_000.0
GLOBAL_ROPE_WAVELENGTH = 1_000_000.0


def is_sliding_window_layer(index, use_sliding_window_attention=True):
    """Whether decoder layer `index` attends within the sliding window (else to every key)."""
    return use_sliding_window_attention and index % SLIDING_WINDOW_PATTERN < SLIDING_WINDOW_PATTERN - 1


def layer_types(num_layers, use_sliding_window_attention=True):
    """`is_sliding_window_layer` of each layer: [bool] * num_layers."""
    return [is_sliding_window_layer(i, use_sliding_window_attention) for i in range(num_layers)]


def rope_wavelength(local):
    """The RoPE base of a local (sliding-window) or a global layer."""
    return LOCAL_ROPE_WAVELENGTH if local else GLOBAL_ROPE_WAVELENGTH


def tokens_per_image(image_size, patch_size, pool_size):
    """Image embeddings per image: the patch grid, average-pooled by `pool_size` on each side."""
    return (image_size // patch_size // pool_size) ** 2
