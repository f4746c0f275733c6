"""`gemma3-tf plan`: memory per replica of a training job, before it runs.

Parameters, gradients and AdamW slots are counted exactly, from the architecture built inside a
`tf.Graph` (declared, never allocated: 27B plans in a second). Activations are an estimate of what
the backward pass keeps per decoder block (the tensors listed in `_activation_elements_per_token`),
plus the float32 logits; the KV cache line is what generation at that length would hold.
Data parallelism (TPUStrategy, MirroredStrategy) gives every replica a full copy of the weights.
"""

import dataclasses


GIB = 1024**3
# Memory per chip / device that jobs can use (HBM, or GPU memory).
DEVICES = {
    "v4": 32 * GIB, "v5e": 16 * GIB, "v5p": 95 * GIB, "v6e": 32 * GIB,
    "a100-40gb": 40 * GIB, "a100-80gb": 80 * GIB, "h100": 80 * GIB, "h200": 141 * GIB,
}
HEADROOM = 0.9  # runtimes and XLA's scratch space take the rest
_BYTES = {"float32": 4, "bfloat16": 2, "mixed_bfloat16": 4}  # variable bytes per dtype policy
_COMPUTE_BYTES = {"float32": 4, "bfloat16": 2, "mixed_bfloat16": 2}


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    parameters: int
    trainable_parameters: int
    parameter_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    kv_cache_bytes: int
    replicas: int
    batch_per_replica: int

    @property
    def training_bytes(self):
        return self.parameter_bytes + self.gradient_bytes + self.optimizer_bytes + self.activation_bytes

    def fits(self, device):
        if device.lower() not in DEVICES:
            raise ValueError(f"`device` must be one of {sorted(DEVICES)}. Received: {device!r}")
        return self.training_bytes <= HEADROOM * DEVICES[device.lower()]

    def table(self, device=None):
        rows = [("parameters", f"{self.parameters:,} ({self.trainable_parameters:,} trainable)"),
                ("weights", _gib(self.parameter_bytes)), ("gradients", _gib(self.gradient_bytes)),
                ("AdamW slots", _gib(self.optimizer_bytes)), ("activations (estimate)", _gib(self.activation_bytes)),
                ("training total per replica", _gib(self.training_bytes)),
                ("KV cache at this length (generation)", _gib(self.kv_cache_bytes)),
                ("replicas x batch per replica", f"{self.replicas} x {self.batch_per_replica}")]
        if device:
            verdict = "fits" if self.fits(device) else "does NOT fit"
            rows.append((f"{device} ({_gib(DEVICES[device.lower()])})", f"{verdict} (with {1 - HEADROOM:.0%} headroom)"))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _gib(size):
    return f"{size / GIB:.2f} GiB"


def _activation_elements_per_token(backbone, sequence_length, remat):
    """Elements the backward pass keeps per token of one decoder block: norms' inputs and outputs,
    q/k/v, attention scores and probabilities (over `sequence_length` keys), the attention output,
    and the MLP's gate, up, activation and product; with remat, only the block's input."""
    hidden, ffw = backbone.hidden_dim, backbone.intermediate_dim
    query, key_value = backbone.num_query_heads * backbone.head_dim, backbone.num_key_value_heads * backbone.head_dim
    if remat:
        return hidden
    return 10 * hidden + 2 * query + 2 * key_value + 2 * backbone.num_query_heads * sequence_length + 4 * ffw


def plan(preset, global_batch_size, sequence_length, replicas=1, lora_rank=0, dtype="float32", remat=False):
    """The `MemoryPlan` of training `preset` at this batch and length over `replicas` data-parallel replicas."""
    from gemma3_tf import Gemma3Backbone

    if dtype not in _BYTES:
        raise ValueError(f"`dtype` must be one of {sorted(_BYTES)}. Received: {dtype!r}")
    if global_batch_size % replicas:
        raise ValueError(f"global_batch_size={global_batch_size} must be divisible by replicas={replicas}.")
    import tensorflow as tf  # here: the command line lists DEVICES without loading TensorFlow

    with tf.Graph().as_default():  # declared, not allocated
        backbone = Gemma3Backbone.from_preset(preset, load_weights=False, dtype=dtype)
        if lora_rank:
            backbone.enable_lora(lora_rank)
        parameters = sum(w.shape.num_elements() for w in backbone.weights)
        trainable = sum(w.shape.num_elements() for w in backbone.trainable_weights)
    batch = global_batch_size // replicas
    variable_bytes, compute_bytes = _BYTES[dtype], _COMPUTE_BYTES[dtype]
    tokens = batch * sequence_length
    activations = (backbone.num_layers * tokens * _activation_elements_per_token(backbone, sequence_length, remat)
                   * compute_bytes
                   + tokens * backbone.hidden_dim * compute_bytes * 2  # embeddings, final norm
                   + 3 * tokens * backbone.vocabulary_size * 4)  # float32 logits, softmax, their gradient
    if remat:  # one block's activations exist at a time while it is recomputed
        activations += tokens * _activation_elements_per_token(backbone, sequence_length, False) * compute_bytes
    kv_cache = (2 * backbone.num_layers * batch * sequence_length * backbone.num_key_value_heads
                * backbone.head_dim * compute_bytes)
    return MemoryPlan(
        parameters=parameters, trainable_parameters=trainable, parameter_bytes=parameters * variable_bytes,
        gradient_bytes=trainable * variable_bytes, optimizer_bytes=2 * trainable * variable_bytes,
        activation_bytes=int(activations), kv_cache_bytes=kv_cache, replicas=replicas, batch_per_replica=batch)
