"""Token samplers for `Gemma3CausalLM.generate`: logits [B, V] -> next ids [B], inside the XLA decode loop.

Random samplers are stateless: the draw at decode step `step` depends only on
(`seed`, `step`), so a seeded generation is reproducible, eagerly or compiled.
"""

import tensorflow as tf


class Sampler:
    """Base: `temperature` rescales logits; `seed` (an int, or None for a fresh one per call) fixes the draws."""

    def __init__(self, temperature=1.0, seed=None):
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0 (use GreedySampler for argmax). Received: {temperature}")
        self.temperature = temperature
        self.seed = seed

    def __call__(self, logits, seed, step):
        """logits [B, V] float32; seed int64 scalar; step int32 scalar -> ids [B] int32."""
        raise NotImplementedError

    def _draw(self, logits, seed, step):
        """A categorical draw by the Gumbel-max trick (XLA compiles stateless_uniform, not the multinomial op)."""
        stateless_seed = tf.stack([tf.cast(seed, tf.int32), tf.cast(step, tf.int32)])
        uniform = tf.random.stateless_uniform(tf.shape(logits), stateless_seed, minval=1e-20, maxval=1.0)
        return tf.argmax(logits / self.temperature - tf.math.log(-tf.math.log(uniform)), axis=-1, output_type=tf.int32)

    def get_config(self):
        return {"temperature": self.temperature, "seed": self.seed}


class GreedySampler(Sampler):
    def __init__(self):
        super().__init__()

    def __call__(self, logits, seed, step):
        return tf.argmax(logits, axis=-1, output_type=tf.int32)

    def get_config(self):
        return {}


class RandomSampler(Sampler):
    """Samples from the whole softmax."""

    def __call__(self, logits, seed, step):
        return self._draw(logits, seed, step)


class TopKSampler(Sampler):
    """Samples among the `k` most likely tokens."""

    def __init__(self, k=5, temperature=1.0, seed=None):
        super().__init__(temperature, seed)
        if k < 1:
            raise ValueError(f"`k` must be >= 1. Received: {k}")
        self.k = k

    def __call__(self, logits, seed, step):
        top_logits, top_ids = tf.math.top_k(logits, k=self.k)
        choice = self._draw(top_logits, seed, step)
        return tf.gather(top_ids, choice, batch_dims=1)

    def get_config(self):
        return {**super().get_config(), "k": self.k}


class TopPSampler(Sampler):
    """Nucleus sampling: the smallest set of tokens whose probabilities reach `p` (after `temperature`).

    `k` bounds the candidates first (the top-k sort is much cheaper than sorting a 262k
    vocabulary each step); `k=None` sorts the whole vocabulary (exact).
    """

    def __init__(self, p=0.9, k=None, temperature=1.0, seed=None):
        super().__init__(temperature, seed)
        if not 0 < p <= 1:
            raise ValueError(f"`p` must be in (0, 1]. Received: {p}")
        self.p = p
        self.k = k

    def __call__(self, logits, seed, step):
        k = self.k or logits.shape[-1]
        top_logits, top_ids = tf.math.top_k(logits, k=k)
        probabilities = tf.nn.softmax(top_logits / self.temperature, axis=-1)
        # Keep a token if the mass before it is still below p (so the first token always stays).
        before = tf.cumsum(probabilities, axis=-1, exclusive=True)
        top_logits = tf.where(before < self.p, top_logits, -1e9)
        choice = self._draw(top_logits, seed, step)
        return tf.gather(top_ids, choice, batch_dims=1)

    def get_config(self):
        return {**super().get_config(), "p": self.p, "k": self.k}


SAMPLERS = {"greedy": GreedySampler, "random": RandomSampler, "top_k": TopKSampler, "top_p": TopPSampler}


def get(sampler):
    """A sampler instance from an instance or a name (`greedy`, `random`, `top_k`, `top_p`)."""
    if isinstance(sampler, Sampler):
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"`sampler` must be a Sampler or one of {sorted(SAMPLERS)}. Received: {sampler!r}")
    return SAMPLERS[sampler]()
