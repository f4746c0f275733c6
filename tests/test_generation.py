"""Generation: the XLA KV-cache decoder against uncached full-sequence forward passes, the samplers,
and the real 270M against HF transformers' greedy continuations."""

import numpy as np
import pytest
import tensorflow as tf

import gemma3_tf
from gemma3_tf import samplers
from gemma3_tf.generation import Decoder
from keras_hub_oracle import TEXT_CONFIG, VISION_CONFIG, randomize, text_inputs, vision_inputs

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def text_lm():
    backbone = gemma3_tf.Gemma3Backbone(**dict(TEXT_CONFIG, final_logit_soft_cap=None))
    randomize(backbone, scale=0.5)
    return gemma3_tf.Gemma3CausalLM(backbone)


@pytest.fixture(scope="module")
def vision_lm():
    backbone = gemma3_tf.Gemma3Backbone(**TEXT_CONFIG, vision_encoder=gemma3_tf.Gemma3VisionEncoder(**VISION_CONFIG))
    randomize(backbone, scale=0.5)
    return gemma3_tf.Gemma3CausalLM(backbone)


def full_logits(causal_lm, token_ids, **vision):
    token_ids = np.asarray(token_ids, "int32")
    return np.asarray(causal_lm({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids), **vision}))


def test_cached_steps_equal_uncached_logits_across_the_sliding_window(text_lm):
    backbone = text_lm.backbone
    token_ids = text_inputs(batch=1, length=20)["token_ids"]  # window 4: most keys fall out of local layers
    reference = full_logits(text_lm, token_ids)[0]
    cache = backbone.empty_cache(1, 20)
    key_mask = tf.ones([1, 20], tf.int32)
    hidden, cache = backbone.forward({"token_ids": token_ids[:, :5], "padding_mask": key_mask}, cache)  # prefill
    steps = [hidden[0]]
    for position in range(5, 20):
        step = {"token_ids": token_ids[:, position:position + 1], "padding_mask": key_mask}
        hidden, cache = backbone.forward(step, cache, position)
        steps.append(hidden[0])
    logits = np.asarray(backbone.token_embedding(tf.concat(steps, 0)[None], reverse=True))[0]
    np.testing.assert_allclose(logits, reference, atol=TOLERANCE, rtol=0)


def assert_greedy_consistent(causal_lm, prompt, generated, **vision):
    """Each greedy token is the argmax of an uncached forward pass over everything before it."""
    sequence = np.concatenate([prompt, generated])[None]
    logits = full_logits(causal_lm, sequence, **vision)[0]
    predicted = logits[len(prompt) - 1:-1].argmax(-1)
    np.testing.assert_array_equal(predicted, generated)


def test_ragged_batch_matches_single_rows_and_uncached_argmax(text_lm):
    inputs = text_inputs(batch=3, length=12)  # right-padded rows of 12, 9 and 6 tokens
    generated = text_lm.generate_ids(inputs["token_ids"], inputs["padding_mask"], 10, stop_token_ids=())
    assert generated.shape == (3, 10)
    for row in range(3):
        prompt = inputs["token_ids"][row, : inputs["padding_mask"][row].sum()]
        alone = text_lm.generate_ids(prompt[None], np.ones((1, len(prompt)), "int32"), 10, stop_token_ids=())
        np.testing.assert_array_equal(generated[row], alone[0])
        assert_greedy_consistent(text_lm, prompt, generated[row])


def test_rows_stop_on_stop_tokens_and_pad(text_lm):
    inputs = text_inputs(batch=2, length=8)
    free = text_lm.generate_ids(inputs["token_ids"], inputs["padding_mask"], 12, stop_token_ids=())
    stop = int(free[0, 3])
    stopped = text_lm.generate_ids(inputs["token_ids"], inputs["padding_mask"], 12, stop_token_ids=(stop,))
    for row in range(2):
        first = list(free[row]).index(stop) if stop in free[row] else 12
        np.testing.assert_array_equal(stopped[row, : first + 1], free[row, : first + 1])
        assert (stopped[row, first + 1:] == 0).all()


def test_generation_with_images_matches_uncached_reference(vision_lm):
    inputs = vision_inputs([2, 1])
    generated = vision_lm.generate_ids(
        inputs["token_ids"], inputs["padding_mask"], 6, stop_token_ids=(),
        images=inputs["images"], vision_indices=inputs["vision_indices"], vision_mask=inputs["vision_mask"])
    for row in range(2):
        length = inputs["padding_mask"][row].sum()
        prompt = inputs["token_ids"][row, :length]
        vision = {
            "images": inputs["images"][row:row + 1],
            "vision_indices": inputs["vision_indices"][row:row + 1],
            "vision_mask": np.pad(inputs["vision_mask"][row:row + 1, :length], [(0, 0), (0, 6)]),
        }
        assert_greedy_consistent(vision_lm, prompt, generated[row], **vision)


def test_streamed_steps_equal_the_fused_loop(text_lm):
    inputs = text_inputs(batch=2, length=8)
    decoder = Decoder(text_lm.backbone, samplers.TopKSampler(k=5, temperature=3.0))
    fused = decoder(inputs["token_ids"], inputs["padding_mask"], 12, seed=4)
    stop = int(fused[0, 2])
    for stop_ids in [(), (stop,)]:
        expected = decoder(inputs["token_ids"], inputs["padding_mask"], 12, stop_token_ids=stop_ids, seed=4)
        steps = []
        streamed = decoder(inputs["token_ids"], inputs["padding_mask"], 12, stop_token_ids=stop_ids, seed=4,
                           on_step=steps.append)
        np.testing.assert_array_equal(streamed, expected)
        np.testing.assert_array_equal(np.stack(steps, axis=1), expected[:, : len(steps)])
        if stop_ids:  # no step after the last row's stop
            last_step = max(list(row).index(stop) if stop in row else 11 for row in expected)
            assert len(steps) == last_step + 1 and (expected[:, len(steps):] == 0).all()


def test_seeded_samplers_are_reproducible_and_respect_their_rules(text_lm):
    inputs = text_inputs(batch=2, length=8)
    prompt_ids, mask = inputs["token_ids"], inputs["padding_mask"]

    decoder = Decoder(text_lm.backbone)  # sampling parameters are runtime inputs: one compile for all

    def sample(sampler, seed, steps=8):
        decoder.sampler = samplers.get(sampler)
        return decoder(prompt_ids, mask, steps, seed=seed)

    hot = samplers.RandomSampler(temperature=5.0)
    np.testing.assert_array_equal(sample(hot, 7), sample(hot, 7))
    assert not np.array_equal(sample(hot, 7), sample(hot, 8))
    greedy = sample("greedy", 0)
    np.testing.assert_array_equal(sample(samplers.TopPSampler(p=1e-6), 3), greedy)
    np.testing.assert_array_equal(sample(samplers.TopKSampler(k=1), 3), greedy)
    top3 = sample(samplers.TopKSampler(k=3, temperature=5.0), 11, steps=1)[:, 0]
    first_logits = full_logits(text_lm, prompt_ids)  # rows' last prompt positions
    for row in range(2):
        last = first_logits[row, mask[row].sum() - 1]
        assert top3[row] in np.argsort(-last)[:3]


def test_sample_draws_each_row_from_its_own_truncated_softmax():
    """`samplers.sample` against numpy: the frequencies of 4000 draws per row match the distribution each
    row's parameters define (whole softmax, top-k, top-p, greedy), all rows in one call."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, [1, 12]).astype("float32").repeat(4, axis=0)
    temperature, top_k, top_p = [1.5, 0.7, 1.0, 0.0], [0, 3, 0, 0], [1.0, 1.0, 0.6, 1.0]

    def reference(row):
        if temperature[row] == 0:
            return np.eye(12)[np.argmax(logits[row])]
        p = np.exp(logits[row] / temperature[row])
        p /= p.sum()
        order = np.argsort(-p)
        keep = np.zeros(12, bool)
        keep[order[: top_k[row] or 12]] = True
        before = np.cumsum(p[order]) - p[order]
        keep[order[(before >= top_p[row]) & (np.arange(12) > 0)]] = False
        return np.where(keep, p, 0) / np.where(keep, p, 0).sum()

    draws = 4000  # per row: one call with each row repeated, each copy with its own uniform draw
    uniforms = samplers.step_uniforms(tf.range(4), draws)  # per-row seeds 0..3
    repeat = lambda values: tf.repeat(tf.constant(values), draws, axis=0)  # noqa: E731
    ids = samplers.sample(repeat(logits), tf.reshape(uniforms, [-1]), repeat(temperature), repeat(top_k),
                          repeat(top_p)).numpy().reshape(4, draws)
    counts = np.stack([np.bincount(row, minlength=12) for row in ids])
    frequencies = counts / counts.sum(axis=1, keepdims=True)
    for row in range(4):
        expected = reference(row)
        assert (frequencies[row][expected == 0] == 0).all()
        np.testing.assert_allclose(frequencies[row], expected, atol=0.03)


def test_compile_sets_the_sampler(text_lm):
    inputs = text_inputs(batch=1, length=6)
    text_lm.compile(sampler=samplers.TopKSampler(k=4, seed=5))
    try:
        first = text_lm.generate_ids(inputs["token_ids"], inputs["padding_mask"], 5, stop_token_ids=())
        np.testing.assert_array_equal(first, text_lm.generate_ids(inputs["token_ids"], inputs["padding_mask"], 5,
                                                                  stop_token_ids=()))
    finally:
        text_lm.compile(sampler="greedy")
    with pytest.raises(ValueError, match=r"`sampler` must be a Sampler or one of .* Received: 'beam'"):
        samplers.get("beam")


@pytest.mark.parametrize("sampler", [
    samplers.GreedySampler(), samplers.RandomSampler(0.7, seed=3), samplers.Sampler(0.5, 1, top_k=9, top_p=0.8),
    samplers.TopKSampler(k=4, temperature=0.9, seed=5), samplers.TopPSampler(p=0.8, k=20, seed=2)])
def test_sampler_configs_round_trip(sampler):
    again = type(sampler).from_config(sampler.get_config())
    assert vars(again) == vars(sampler)
    assert [np.asarray(value).tolist() for value in again.parameters(2)] == [
        np.asarray(value).tolist() for value in sampler.parameters(2)]


@pytest.mark.slow
def test_real_270m_greedy_matches_hf_transformers(real_causal_lm, hf_reference_270m):
    for case in hf_reference_270m["prompts"]:
        token_ids = np.array([case["input_ids"]], "int32")
        generated = real_causal_lm.generate_ids(token_ids, np.ones_like(token_ids), 32, stop_token_ids=())
        assert generated[0].tolist() == case["greedy_ids"], case["prompt"]


@pytest.mark.slow
def test_real_270m_streamed_text_adds_up_to_the_completion(real_causal_lm):
    prompts = ["The capital of France is", "def fibonacci(n):"]
    pieces = []
    completions = real_causal_lm.generate(prompts, max_length=24, stream=pieces.append)
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        assert prompt + "".join(step[row] for step in pieces) == completion
    assert len(pieces) > 1 and all(len(step) == 2 for step in pieces)
