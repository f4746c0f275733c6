"""The decoder behind `Gemma3CausalLM.generate`: a static KV cache, one prefill pass, then a decode loop,
all in one XLA-compiled function per (batch, prompt bucket, new-token bucket) shape.

Prompts are left-aligned inside the compiled function, so every row's next token sits at
the same cache position: one cache write per step for the whole batch. RoPE and the
sliding window depend only on distances between positions, so a row's logits do not
change when its tokens shift right; the padding in front is masked out as keys.
"""

import functools

import numpy as np
import tensorflow as tf

from gemma3_tf import samplers as samplers_lib
from gemma3_tf.quantization import compiled_by_xla

MIN_BUCKET = 16  # prompt lengths and new-token counts round up to powers of two from here


def left_align(values, lengths, length):
    """Moves each row's first `lengths[b]` entries of `values` [B, L] to the end of a [B, length] row."""
    shift = length - lengths  # [B]
    source = tf.range(length)[None, :] - shift[:, None]
    aligned = tf.gather(values, tf.maximum(source, 0), batch_dims=1)
    return tf.where(source >= 0, aligned, tf.zeros_like(aligned))


MAX_STOP_TOKENS = 8
_MAX_BUCKET_DOUBLINGS = 27  # MIN_BUCKET * 2**26 = 2**30 tokens: beyond any context


def stop_id_slots(stop_token_ids):
    """`stop_token_ids` in the decode loop's MAX_STOP_TOKENS slots (unused ones -1): [MAX_STOP_TOKENS] int32."""
    stop_token_ids = tuple(stop_token_ids or ())
    if len(stop_token_ids) > MAX_STOP_TOKENS:
        raise ValueError(f"`stop_token_ids` holds {len(stop_token_ids)} ids; at most {MAX_STOP_TOKENS}.")
    return np.array(stop_token_ids + (-1,) * (MAX_STOP_TOKENS - len(stop_token_ids)), "int32")


def compile_bucket(value):
    """The smallest power of two >= `value` and >= MIN_BUCKET (an int or an int32 tensor): the lengths of the
    shapes XLA compiles for, so few compiles. Returns an int32 tensor."""
    powers = tf.constant([MIN_BUCKET << i for i in range(_MAX_BUCKET_DOUBLINGS)])
    return tf.reduce_min(tf.where(powers >= tf.cast(value, tf.int32), powers, powers[-1]))


def _compiled(function):
    """`function` as a tf.function XLA compiles, traced with `quantization.compiled_by_xla` open."""
    @functools.wraps(function)
    def traced(*args, **kwargs):
        with compiled_by_xla():
            return function(*args, **kwargs)
    return tf.function(traced, jit_compile=True)


class Decoder:
    """Generates up to `max_new_tokens` per row after right-padded prompts, stopping rows on stop tokens.

    The prompt length and the number of new tokens are rounded up to powers of two; stop ids,
    the draws and the actual number of new tokens are runtime inputs, so calls of other lengths
    within a bucket reuse the compiled function. With `on_step`, the prefill and each decode
    step are compiled separately and the loop runs in Python, so each step's ids reach the host.
    `decode` is the whole loop as one TensorFlow function of tensors, for the SavedModel export.
    """

    def __init__(self, backbone, sampler="greedy", pad_token_id=0):
        self.backbone = backbone
        self.sampler = samplers_lib.get(sampler)
        self.pad_token_id = pad_token_id
        self.decode_compiled = _compiled(self.decode)
        self._prefill = _compiled(self._prefill_eager)
        self._step = _compiled(self._step_eager)

    def __call__(self, token_ids, padding_mask, max_new_tokens, stop_token_ids=(), seed=None, vision=None,
                 on_step=None):
        """token_ids, padding_mask: [B, T] right-padded prompts; max_new_tokens: an int, or one per row. Returns
        new ids [B, the largest max_new_tokens] (pad after a row's stop token, which is kept, or its last
        new token) as a numpy array. `on_step(ids)`, if given, receives each step's ids [B] as they are
        generated."""
        stops = stop_id_slots(stop_token_ids)
        token_ids = np.asarray(token_ids, "int32")
        batch = len(token_ids)
        limits = np.broadcast_to(np.asarray(max_new_tokens, "int32"), [batch])
        max_new_tokens = int(limits.max())
        lengths = np.asarray(padding_mask, "int32").sum(-1).astype("int32")
        bucket = int(compile_bucket(token_ids.shape[1]))
        token_ids = np.pad(token_ids, [(0, 0), (0, bucket - token_ids.shape[1])])
        if seed is None:
            seed = self.sampler.seed if self.sampler.seed is not None else np.random.randint(2**31)
        uniforms = samplers_lib.step_uniforms(tf.fill([batch], int(seed)), int(compile_bucket(max_new_tokens)))
        sampling = self.sampler.parameters(batch)
        vision = None if vision is None else self._pad_vision(vision, bucket)
        if on_step is None:
            generated = self.decode_compiled(token_ids, lengths, tf.constant(limits), stops, uniforms, sampling,
                                             vision)
            return generated.numpy()[:, :max_new_tokens]
        return self._stream(token_ids, lengths, limits, stops, uniforms, sampling, vision, on_step)

    def _stream(self, token_ids, lengths, limits, stop_ids, uniforms, sampling, vision, on_step):
        logits, cache, key_mask = self._prefill(token_ids, lengths, uniforms.shape[1], vision)
        generated = np.full([len(token_ids), int(limits.max())], self.pad_token_id, "int32")
        done = tf.constant(limits <= 0)
        for step in range(generated.shape[1]):
            position = tf.constant(token_ids.shape[1] + step)
            next_ids, logits, cache, done = self._step(logits, cache, key_mask, uniforms[:, step], sampling,
                                                       position, stop_ids, done)
            done = tf.logical_or(done, step + 1 >= limits)
            generated[:, step] = next_ids.numpy()
            on_step(generated[:, step].copy())
            if done.numpy().all():
                break
        return generated

    @staticmethod
    def _pad_vision(vision, bucket):
        images, vision_indices, vision_mask = vision
        vision_mask = np.pad(np.asarray(vision_mask, "int32"), [(0, 0), (0, bucket - np.shape(vision_mask)[1])])
        return np.asarray(images, "float32"), np.asarray(vision_indices, "int32"), vision_mask

    def _prefill_eager(self, token_ids, lengths, capacity, vision=None):
        """Runs the prompts [B, T] into a fresh cache with room for `capacity` new tokens.
        Returns (logits of the next token [B, V], cache, key mask [B, T + capacity])."""
        backbone = self.backbone
        batch, prompt_length = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
        prompt_mask = tf.range(prompt_length)[None, :] >= (prompt_length - lengths)[:, None]
        key_mask = tf.concat([tf.cast(prompt_mask, tf.int32), tf.ones([batch, capacity], tf.int32)], axis=1)
        # Left-align: rows end together at `prompt_length`, their padding in front.
        inputs = {"token_ids": left_align(token_ids, lengths, prompt_length), "padding_mask": key_mask}
        if vision is not None:
            images, vision_indices, vision_mask = vision
            # Real indices are > 0 (position 0 is BOS); the zero padding keeps pointing at position 0,
            # which the interleaving restores.
            shift = prompt_length - lengths
            inputs.update(images=images, vision_mask=left_align(vision_mask, lengths, prompt_length),
                          vision_indices=tf.where(vision_indices > 0, vision_indices + shift[:, None], 0))
        cache = backbone.empty_cache(batch, prompt_length + capacity)
        hidden, cache = backbone.forward(inputs, cache)
        return backbone.logits(hidden[:, -1]), cache, key_mask

    def _step_eager(self, logits, cache, key_mask, uniform, sampling, position, stop_ids, done):
        """Samples the next ids [B] from `logits` and runs them at cache `position`.
        Returns (ids, their successors' logits, cache, done)."""
        next_ids = samplers_lib.sample(logits, uniform, *sampling)
        next_ids = tf.where(done, self.pad_token_id, next_ids)
        done = tf.logical_or(done, tf.reduce_any(next_ids[:, None] == stop_ids[None], axis=-1))
        inputs = {"token_ids": next_ids[:, None], "padding_mask": key_mask}
        hidden, cache = self.backbone.forward(inputs, cache, position)
        return next_ids, self.backbone.logits(hidden[:, -1]), cache, done

    def decode(self, token_ids, lengths, max_new_tokens, stop_ids, uniforms, sampling, vision=None):
        """The prefill and decode loop, in TensorFlow ops only.

        Args:
            token_ids: [B, T] right-padded prompts; lengths: [B] their lengths.
            max_new_tokens: [B] new tokens per row, each at most C.
            stop_ids: [MAX_STOP_TOKENS] (unused slots -1).
            uniforms: [B, C] the draws of `samplers.step_uniforms`; C is the cache's room for new tokens.
            sampling: (temperature, top_k, top_p), each [B]: see `samplers.sample`.
            vision: optional (images, vision_indices, vision_mask) as the preprocessor makes them.
        Returns: new ids [B, C], `pad_token_id` after each row's stop token or limit.
        """
        capacity = tf.shape(uniforms)[1]
        logits, cache, key_mask = self._prefill_eager(token_ids, lengths, capacity, vision)
        prompt_length = tf.shape(token_ids)[1]

        def body(step, logits, cache, generated, done):
            next_ids, logits, cache, done = self._step_eager(
                logits, cache, key_mask, uniforms[:, step], sampling, prompt_length + step, stop_ids, done)
            done = tf.logical_or(done, step + 1 >= max_new_tokens)
            generated = tf.tensor_scatter_nd_update(generated, [[step]], next_ids[None])
            return step + 1, logits, cache, generated, done

        def cond(step, logits, cache, generated, done):
            return tf.logical_not(tf.reduce_all(done))

        batch = tf.shape(token_ids)[0]
        generated = tf.fill([capacity, batch], tf.constant(self.pad_token_id, tf.int32))  # time-major: a row per step
        done = max_new_tokens <= 0
        _, _, _, generated, _ = tf.while_loop(
            cond, body, (tf.constant(0), logits, cache, generated, done), maximum_iterations=capacity)
        return tf.transpose(generated)
