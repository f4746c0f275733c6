"""AdamW with warmup and decay, weight decay on matrices only."""

import keras

DECAYS = ("cosine", "linear", "constant")


def learning_rate_schedule(learning_rate, steps, warmup_steps=0, decay="cosine", final_fraction=0.0):
    """Linear warmup to `learning_rate` over `warmup_steps`, then `decay` to `final_fraction` of it at `steps`."""
    if decay not in DECAYS:
        raise ValueError(f"`decay` must be one of {DECAYS}. Received: {decay!r}")
    decay_steps = max(steps - warmup_steps, 1)
    if decay == "cosine":
        after = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps, alpha=final_fraction)
    elif decay == "linear":
        after = keras.optimizers.schedules.PolynomialDecay(learning_rate, decay_steps,
                                                           end_learning_rate=learning_rate * final_fraction)
    else:
        after = lambda step: learning_rate  # noqa: E731
    if not warmup_steps:
        return after if decay != "constant" else learning_rate
    return _Warmup(learning_rate, warmup_steps, after)


class _Warmup(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, peak, warmup_steps, after):
        self.peak, self.warmup_steps, self.after = peak, warmup_steps, after

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.peak * (step + 1) / self.warmup_steps
        return keras.ops.where(step < self.warmup_steps, warm, self.after(step - self.warmup_steps))

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps}


def _excluded_from_weight_decay(variable):
    """Norm scales, biases and embeddings: the usual exclusions (LoRA factors of embeddings excepted)."""
    path = variable.path
    return variable.ndim < 2 or "embedding" in path.split("/")[-1] or path.endswith("embeddings")


def build_optimizer(model, learning_rate, steps, warmup_steps=0, decay="cosine", weight_decay=0.01,
                    beta_1=0.9, beta_2=0.999):
    """AdamW over `model`'s trainable weights, with weight decay on its matrices only.

    No clipping here: Keras would clip each replica's share of the gradient before adding them up;
    the trainer clips the summed gradient.
    """
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate_schedule(learning_rate, steps, warmup_steps, decay),
        weight_decay=weight_decay, beta_1=beta_1, beta_2=beta_2)
    optimizer.exclude_from_weight_decay(
        var_list=[variable for variable in model.trainable_variables if _excluded_from_weight_decay(variable)])
    return optimizer
