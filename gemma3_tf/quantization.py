"""Weight-only int8: Keras' own quantization (`Model.quantize` with an `Int8QuantizationConfig` that leaves the
activations in float), and the test the layers use to keep the int8 kernel inside their own matmuls.

Why weight-only: Keras' default int8 also quantizes the activations, and the int8 x int8 dot it then runs is far
slower than float32 on CPU (the 270M's 262144 x 640 logits matvec under XLA: 745 ms against 37 ms, 2-core AMD
EPYC, AVX2). With float activations the cast is the matmul's operand, which XLA fuses into the dot: that matvec
alone reads the int8 table in place in 19 ms. Measured in the whole decode it does not pay yet (issue 21's
closing note): in a compiled decode step XLA fuses each RMSNorm and cast into a loop fusion whose dot walks the
[D, F] kernels by column (the step runs at less than half float32's speed), and the whole decode loop runs at
float32's speed, as if the casts were hoisted out of it.
"""

WEIGHT_OPTIONS = ("int8",)


def is_weight_only_int8(layer):
    """Whether `layer` (an EinsumDense or embedding) holds int8 weights with a per-channel scale and float inputs."""
    return layer.quantization_mode == "int8" and getattr(layer, "inputs_quantizer", None) is None


def in_own_matmul(layer):
    """Whether the layers' own matmuls take `layer`'s kernel: a float one, or weight-only int8 (divided by its
    scale after). Keras' other quantization modes run the layer's own call."""
    return layer.quantization_mode is None or is_weight_only_int8(layer)


def quantize_weights(model, option):
    """Quantizes `model`'s weights in place; `option`: one of WEIGHT_OPTIONS."""
    import keras  # here, not at the top: the CLI reads WEIGHT_OPTIONS for `--help`, which must not load TensorFlow
    if option not in WEIGHT_OPTIONS:
        raise ValueError(f"`quantize` must be one of {', '.join(WEIGHT_OPTIONS)}. Received: {option!r}")
    # Only the layers Keras can quantize: the others (norms, dropout, masks) would each log a warning.
    quantizable = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding)
    model.quantize(option, config=keras.quantizers.Int8QuantizationConfig(activation_quantizer=None),
                   filters=lambda layer: isinstance(layer, quantizable))
    return model
