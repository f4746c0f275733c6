"""Token samplers for `Gemma3CausalLM.generate` and the exported SavedModel: logits [B, V] -> next ids [B].

One function, `sample`, does all of it with per-row parameters (temperature 0 is greedy), so
the exported model takes them at request time and a served row's draw never depends on the
rows it was batched with. Draws are by inverse CDF from one uniform number per row and step;
`step_uniforms` makes them all up front from per-row seeds. They are computed outside XLA because
TensorFlow's stateless random kernels give other numbers under XLA: this way in-process (XLA)
generation and both kinds of export draw the same tokens for the same seed.
"""

import tensorflow as tf

MAX_TOP_K = 256  # top-k and top-p choose among at most this many most likely tokens


def step_uniforms(seeds, num_steps):
    """seeds [B] (int) -> uniform draws [B, num_steps] in [0, 1): row b's depend on seeds[b] only."""
    seeds = tf.cast(seeds, tf.int32)
    return tf.map_fn(lambda seed: tf.random.stateless_uniform([num_steps], tf.stack([seed, 0])), seeds,
                     fn_output_signature=tf.float32)


def _pick(weights, uniform):
    """Index drawn from unnormalized `weights` [B, N] (>= 0) by inverse CDF at `uniform` [B]."""
    cdf = tf.cumsum(weights, axis=-1)
    target = uniform[:, None] * cdf[:, -1:]
    index = tf.reduce_sum(tf.cast(cdf <= target, tf.int32), axis=-1)
    return tf.minimum(index, tf.shape(weights)[-1] - 1)


def sample(logits, uniform, temperature, top_k, top_p):
    """Next ids [B] int32 from logits [B, V] float32, with per-row parameters, each [B]:

    temperature <= 0 takes the argmax; otherwise logits are divided by it and a token is drawn
    with `uniform` [B]. With `top_k` 0 and `top_p` 1 the draw is from the whole softmax;
    otherwise from the `top_k` most likely tokens (0: no limit), further cut to the smallest set
    whose probability reaches `top_p`, both within the MAX_TOP_K most likely tokens.
    """
    greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)
    sampled = temperature > 0
    truncated = tf.logical_and(sampled, tf.logical_or(top_k > 0, top_p < 1))
    scaled = logits / tf.where(sampled, temperature, 1.0)[:, None]

    def whole_softmax():
        return _pick(tf.exp(scaled - tf.reduce_max(scaled, axis=-1, keepdims=True)), uniform)

    def among_candidates():
        top_logits, top_ids = tf.math.top_k(scaled, k=min(MAX_TOP_K, logits.shape[-1]))
        # Probabilities under the whole softmax, so that top_p means what it means in HF.
        probabilities = tf.exp(top_logits - tf.reduce_logsumexp(scaled, axis=-1, keepdims=True))
        rank = tf.range(tf.shape(top_ids)[1])[None, :]
        keep = tf.logical_or(top_k[:, None] <= 0, rank < top_k[:, None])
        mass_before = tf.cumsum(tf.where(keep, probabilities, 0.0), axis=-1, exclusive=True)
        keep = tf.logical_and(keep, tf.logical_or(rank == 0, mass_before < top_p[:, None]))
        choice = _pick(tf.where(keep, probabilities, 0.0), uniform)
        return tf.gather(top_ids, choice, batch_dims=1)

    ids = greedy
    ids = tf.cond(tf.reduce_any(tf.logical_and(sampled, tf.logical_not(truncated))),
                  lambda: tf.where(truncated, ids, tf.where(sampled, whole_softmax(), ids)), lambda: ids)
    ids = tf.cond(tf.reduce_any(truncated), lambda: tf.where(truncated, among_candidates(), ids), lambda: ids)
    return ids


class Sampler:
    """Fixed sampling parameters for `Gemma3CausalLM.compile(sampler=...)`, as keras-hub's samplers.

    `seed`: an int, or None for a fresh one per `generate` call. Every row uses the same seed.
    """

    def __init__(self, temperature=1.0, seed=None, top_k=0, top_p=1.0):
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0 (use GreedySampler for argmax). Received: {temperature}")
        self.temperature, self.seed, self.top_k, self.top_p = temperature, seed, top_k, top_p

    def parameters(self, batch):
        """(temperature, top_k, top_p), each [batch], for `sample`."""
        return (tf.fill([batch], float(self.temperature)), tf.fill([batch], int(self.top_k)),
                tf.fill([batch], float(self.top_p)))

    def get_config(self):
        """The constructor's arguments: `type(sampler).from_config(sampler.get_config())` is an equal sampler."""
        return {"temperature": self.temperature, "seed": self.seed, "top_k": self.top_k, "top_p": self.top_p}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class GreedySampler(Sampler):
    def __init__(self):
        self.temperature, self.seed, self.top_k, self.top_p = 0.0, 0, 0, 1.0

    def get_config(self):
        return {}


class RandomSampler(Sampler):
    """Samples from the whole softmax."""


class TopKSampler(Sampler):
    """Samples among the `k` most likely tokens (k <= MAX_TOP_K)."""

    def __init__(self, k=5, temperature=1.0, seed=None):
        if not 1 <= k <= MAX_TOP_K:
            raise ValueError(f"`k` must be in [1, {MAX_TOP_K}]. Received: {k}")
        super().__init__(temperature, seed, top_k=k)
        self.k = k

    def get_config(self):
        return {"k": self.k, "temperature": self.temperature, "seed": self.seed}


class TopPSampler(Sampler):
    """Nucleus sampling: the smallest set of tokens whose probabilities reach `p` (after `temperature`),
    among the `k` (default and at most MAX_TOP_K) most likely."""

    def __init__(self, p=0.9, k=None, temperature=1.0, seed=None):
        if not 0 < p <= 1:
            raise ValueError(f"`p` must be in (0, 1]. Received: {p}")
        if k is not None and not 1 <= k <= MAX_TOP_K:
            raise ValueError(f"`k` must be None or in [1, {MAX_TOP_K}]. Received: {k}")
        super().__init__(temperature, seed, top_k=k or 0, top_p=p)
        self.p, self.k = p, k

    def get_config(self):
        return {"p": self.p, "k": self.k, "temperature": self.temperature, "seed": self.seed}


SAMPLERS = {"greedy": GreedySampler, "random": RandomSampler, "top_k": TopKSampler, "top_p": TopPSampler}


def get(sampler):
    """A sampler instance from an instance or a name (`greedy`, `random`, `top_k`, `top_p`)."""
    if isinstance(sampler, Sampler):
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"`sampler` must be a Sampler or one of {sorted(SAMPLERS)}. Received: {sampler!r}")
    return SAMPLERS[sampler]()
