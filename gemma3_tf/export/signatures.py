"""The SavedModel's functions: `serving_default` (generate), `score` and `embed`, as one `tf.Module`.

Everything a request needs runs in the graph: tokenizer (TF Text SentencePiece), image decoding
and resizing, the decode loop and detokenization. Omitted generation parameters take the
signature's defaults (SignatureDef `defaults`, honoured by TF Serving 2.15+); each parameter
is a scalar for the whole request or one value per prompt. Bad requests fail with
InvalidArgumentError naming the input, which TF Serving returns as HTTP 400 / INVALID_ARGUMENT.
"""

import types

import tensorflow as tf

from gemma3_tf import samplers
from gemma3_tf.generation import Decoder, compile_bucket, stop_id_slots
from gemma3_tf.preprocessing import assert_prompts_not_empty
from gemma3_tf.refusals import assert_rows, assert_that

# The SignatureDef defaults of the generation parameters (TF Serving fills omitted inputs with them).
GENERATE_DEFAULTS = {"max_new_tokens": 64, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
# Response tokens whose float32 logits `score` holds at once, [SCORE_CHUNK, V]: 64 MiB for Gemma 3's 262144-token
# vocabulary. Holding a row's [T, V] at once (and up to 10 rows in flight, map_fn's default) took the served 270M's
# peak RSS up by 0.38 GiB on its warmup's short prompts, and by 2.6 GiB for one 2000-token response.
SCORE_CHUNK = 64


class ServingModule(tf.Module):
    """The exported model. Attributes are what `tf.saved_model.save` tracks: the weights, the
    tokenizer's SentencePiece resources, the vocabulary asset and the three functions.

    Args:
        causal_lm: a `Gemma3CausalLM` with a preprocessor.
        limits: a `ServingLimits`: what one request may hold. Each is checked before the work it bounds
            (prompt bytes before tokenizing, tokens before the prefill).
        jit_compile: run the decode loop with XLA. tensorflow_model_server on CPU then needs
            `--xla_cpu_compilation_enabled=true`; without XLA any TF Serving build runs it.
        vocabulary_path: the SentencePiece file to ship in `assets/`.
    """

    def __init__(self, causal_lm, limits, jit_compile, vocabulary_path):
        super().__init__(name="gemma3")
        preprocessor = causal_lm.preprocessor
        if preprocessor is None:
            raise ValueError("Exporting needs a Gemma3CausalLM with a preprocessor (its tokenizer goes into the "
                             "graph).")
        # What the functions run, kept out of the saved object graph (a namespace is not tracked).
        decoder = Decoder(causal_lm.backbone, pad_token_id=preprocessor.tokenizer.pad_token_id)
        self._run = types.SimpleNamespace(backbone=causal_lm.backbone, preprocessor=preprocessor,
                                          tokenizer=preprocessor.tokenizer,
                                          decode=decoder.decode_compiled if jit_compile else decoder.decode)
        self.limits, self._jit_compile = limits, jit_compile
        self.tokenizer_resources = list(preprocessor.tokenizer.resources)
        self.vocabulary = tf.saved_model.Asset(vocabulary_path)
        self._stop_ids = tf.constant(stop_id_slots(preprocessor.tokenizer.stop_token_ids))
        self._hidden_ids = tf.constant(preprocessor.hidden_token_ids, tf.int32)

        defaults = {name: tf.constant(value) for name, value in GENERATE_DEFAULTS.items()}

        def generate(prompt, images=tf.constant("", shape=[1, 0]), max_new_tokens=defaults["max_new_tokens"],
                     temperature=defaults["temperature"], top_k=defaults["top_k"], top_p=defaults["top_p"],
                     seed=defaults["seed"]):
            return self._generate(prompt, images, max_new_tokens, temperature, top_k, top_p, seed)

        self.generate = tf.function(generate, input_signature=[
            tf.TensorSpec([None], tf.string, "prompt"), tf.TensorSpec([None, None], tf.string, "images"),
            tf.TensorSpec(None, tf.int32, "max_new_tokens"), tf.TensorSpec(None, tf.float32, "temperature"),
            tf.TensorSpec(None, tf.int32, "top_k"), tf.TensorSpec(None, tf.float32, "top_p"),
            tf.TensorSpec(None, tf.int32, "seed")])
        self.score = tf.function(self._score, input_signature=[tf.TensorSpec([None], tf.string, "prompt"),
                                                         tf.TensorSpec([None], tf.string, "response")])
        self.embed = tf.function(self._embed, input_signature=[tf.TensorSpec([None], tf.string, "prompt")])

        # What is saved, with the tokenizer's resources, the vocabulary and the functions: the variables the traced
        # functions read. Those are the plain tf.Variables under the keras.Variables, as in Keras' own export archive
        # (tracked keras.Variables would be saved as copies whose handles the functions never read: TF Serving's
        # session loader restores the copies and the functions then find no variable, "Could not find variable
        # scale_5"), and, inside `layers.projections.serving_kernels` (as `export_model` traces), the serving kernels
        # in place of the Keras kernels they copy.
        traced = [function.get_concrete_function() for function in self.signatures.values()]
        self.model_variables = list({id(variable): variable for function in traced
                                     for variable in function.variables}.values())

    @property
    def signatures(self):
        return {"serving_default": self.generate, "score": self.score, "embed": self.embed}

    # --- generate ------------------------------------------------------------------------
    def _admitted(self, prompt, what="prompt"):
        """`prompt` [B], once its row count and bytes are within the limits: what depends on it (the tokenizer
        and everything after) does not start on a request that is refused."""
        batch, limits = tf.shape(prompt)[0], self.limits
        checks = [
            assert_that(batch >= 1, "no_rows", f"`{what}` holds no rows; a request needs at least one."),
            assert_that(batch <= limits.max_rows, "too_many_rows", f"`{what}` holds {{}} rows; this export takes "
                        f"at most max_rows={limits.max_rows} per request.", batch),
            assert_rows(tf.strings.length(prompt) <= limits.max_prompt_bytes, "too_long",
                        f"`{what}[{{}}]` is longer than the max_prompt_bytes={limits.max_prompt_bytes} bytes of "
                        "this export."),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(prompt)

    def _generate(self, prompt, images, max_new_tokens, temperature, top_k, top_p, seed):
        prompt = self._admitted(prompt)
        batch = tf.shape(prompt)[0]
        per_row = lambda value, name: self._per_row(value, batch, name)  # noqa: E731
        max_new_tokens, temperature = per_row(max_new_tokens, "max_new_tokens"), per_row(temperature, "temperature")
        top_k, top_p, seed = per_row(top_k, "top_k"), per_row(top_p, "top_p"), per_row(seed, "seed")
        images = self._image_rows(images, batch)
        checks = [
            assert_rows(max_new_tokens >= 1, "invalid_parameter", "`max_new_tokens[{}]` must be >= 1."),
            assert_rows(top_k >= 0, "invalid_parameter", "`top_k[{}]` must be >= 0 (0: no top-k cut)."),
            assert_rows(top_k <= samplers.MAX_TOP_K, "invalid_parameter",
                        f"`top_k[{{}}]` must be at most {samplers.MAX_TOP_K}."),
            assert_rows((top_p > 0) & (top_p <= 1), "invalid_parameter", "`top_p[{}]` must be in (0, 1]."),
            assert_rows((temperature >= 0) & tf.math.is_finite(temperature), "invalid_parameter",
                        "`temperature[{}]` must be finite and >= 0 (0: greedy)."),
            assert_rows(tf.reduce_all(tf.strings.length(images) <= self.limits.max_image_bytes, axis=1),
                        "image_too_large", f"`images[{{}}]` holds an image over the "
                        f"max_image_bytes={self.limits.max_image_bytes} bytes of this export."),
        ]
        with tf.control_dependencies(checks):
            features = self._run.preprocessor.serving_features(prompt, images, self.limits.max_image_pixels)
        token_ids, padding_mask = features["token_ids"], features["padding_mask"]
        lengths = tf.reduce_sum(padding_mask, axis=1)
        room = self.limits.max_length - lengths
        # The prefill takes token_ids: gated here, it does not start on a prompt that is refused.
        with tf.control_dependencies([assert_rows(
                max_new_tokens <= room, "too_long",
                f"`prompt[{{}}]` is too long: its tokens (BOS and image tokens included) plus `max_new_tokens` "
                f"exceed the max_length={self.limits.max_length} of this export.")]):
            token_ids, capacity = tf.identity(token_ids), tf.reduce_max(max_new_tokens)
        if self._jit_compile:  # few shapes, so few compiles: pad lengths to powers of two
            # Room for at least the default number of new tokens: every request up to it runs the shape
            # that the warmup records compile (the loop still stops at each row's max_new_tokens).
            capacity = compile_bucket(tf.maximum(capacity, GENERATE_DEFAULTS["max_new_tokens"]))
            bucket = compile_bucket(tf.shape(token_ids)[1])
            token_ids = tf.pad(token_ids, [[0, 0], [0, bucket - tf.shape(token_ids)[1]]])
            if "vision_mask" in features:
                features["vision_mask"] = tf.pad(features["vision_mask"], [[0, 0], [0, bucket - tf.shape(
                    features["vision_mask"])[1]]])
        uniforms = samplers.step_uniforms(seed, capacity)
        sampling = (temperature, top_k, top_p)
        vision = None
        if "images" in features:
            vision = (features["images"], features["vision_indices"], features["vision_mask"])
        new_ids = self._decode_with_optional_vision(token_ids, lengths, max_new_tokens, uniforms, sampling, vision)
        return self._completions(new_ids, max_new_tokens)

    def _decode_with_optional_vision(self, token_ids, lengths, max_new_tokens, uniforms, sampling, vision):
        decode = lambda vision: self._run.decode(  # noqa: E731
            token_ids, lengths, max_new_tokens, self._stop_ids, uniforms, sampling, vision)
        if vision is None:
            return decode(None)
        # A batch without images skips the vision encoder.
        return tf.cond(tf.reduce_any(vision[2] > 0), lambda: decode(vision), lambda: decode(None))

    def _completions(self, new_ids, max_new_tokens):
        positions = tf.range(tf.shape(new_ids)[1])[None, :]
        is_stop = tf.reduce_any(new_ids[:, :, None] == self._stop_ids[None, None, :], axis=-1)
        first_stop = tf.reduce_min(tf.where(is_stop, positions, tf.shape(new_ids)[1]), axis=1)
        num_tokens = tf.minimum(first_stop + 1, max_new_tokens)
        shown = tf.logical_and(positions < num_tokens[:, None],
                               tf.reduce_all(new_ids[:, :, None] != self._hidden_ids[None, None, :], axis=-1))
        completion = self._run.tokenizer.detokenize(tf.ragged.boolean_mask(new_ids, shown))
        return {"completion": completion, "num_tokens": num_tokens}

    @staticmethod
    def _per_row(value, batch, name):
        """A scalar or [batch] parameter -> [batch]."""
        value = tf.convert_to_tensor(value)
        size_ok = tf.logical_or(tf.size(value) == 1, tf.logical_and(tf.rank(value) == 1, tf.size(value) == batch))
        with tf.control_dependencies([assert_that(size_ok, "invalid_parameter", f"`{name}` must be a scalar or hold "
                                                  "one value per prompt ({}); it has shape {}.", batch,
                                                  tf.shape(value))]):
            return tf.broadcast_to(tf.reshape(value, [-1]), [batch])

    def _image_rows(self, images, batch):
        """[B, N] images; the default (no images at all) is [1, 0], so any row count passes when N is 0."""
        rows_ok = tf.logical_or(tf.shape(images)[0] == batch, tf.shape(images)[1] == 0)
        with tf.control_dependencies([assert_that(rows_ok, "invalid_shape", "`images` must have one row per prompt "
                                                  "({}); it has {}.", batch, tf.shape(images)[0])]):
            return tf.cond(tf.shape(images)[1] == 0, lambda: tf.fill([batch, 0], ""), lambda: images)

    # --- score and embed -----------------------------------------------------------------
    def _hidden_states(self, token_ids, padding_mask):
        """Final hidden states [B, T, D] of right-padded `token_ids` (one full causal pass)."""
        return self._run.backbone.forward({"token_ids": token_ids, "padding_mask": padding_mask})[0]

    def _prompt_tokens(self, prompt):
        prompt = self._admitted(prompt)
        with tf.control_dependencies([assert_prompts_not_empty(prompt)]):
            return self._run.preprocessor._tokenize(prompt, add_start=True)

    def _check_length(self, tokens, what):
        return assert_rows(tokens.row_lengths() <= self.limits.max_length, "too_long",
                           f"`prompt[{{}}]`{what} is longer than the max_length={self.limits.max_length} tokens of "
                           "this export.")

    def _score(self, prompt, response):
        """Sum of log p(response tokens | prompt), packed as for training (BOS in front) without EOS after."""
        prompt = self._admitted(prompt)
        with tf.control_dependencies([assert_prompts_not_empty(prompt)]):
            tokens, is_response, _ = self._run.preprocessor.prompt_and_response_tokens(
                prompt, self._admitted(response, "response"), add_end_token=False)
        with tf.control_dependencies([self._check_length(tokens, " with its response")]):
            token_ids = tf.cast(tokens.to_tensor(self._run.tokenizer.pad_token_id), tf.int32)
        padding_mask = tf.sequence_mask(tokens.row_lengths(), tf.shape(token_ids)[1], dtype=tf.int32)
        is_response = is_response.to_tensor(0) > 0
        hidden = self._hidden_states(token_ids, padding_mask)
        # Position t predicts token t + 1: only the response's tokens are scored, so only their logits are computed.
        scored = tf.where(is_response[:, 1:])  # [P, 2]: (row, position)
        log_probs = self._log_probs(tf.gather_nd(hidden, scored), tf.gather_nd(token_ids[:, 1:], scored))
        return {"log_likelihood": tf.math.unsorted_segment_sum(log_probs, scored[:, 0], tf.shape(token_ids)[0]),
                "num_tokens": tf.reduce_sum(tf.cast(is_response, tf.int32), axis=1)}

    def _log_probs(self, hidden, targets):
        """log p(targets [P]) after hidden states [P, D], SCORE_CHUNK positions at a time -> [P]."""
        count = tf.shape(targets)[0]
        chunks = (count + SCORE_CHUNK - 1) // SCORE_CHUNK
        padding = chunks * SCORE_CHUNK - count
        hidden = tf.reshape(tf.pad(hidden, [[0, padding], [0, 0]]), [chunks, SCORE_CHUNK, hidden.shape[-1]])
        targets = tf.reshape(tf.pad(targets, [[0, padding]]), [chunks, SCORE_CHUNK])

        def chunk_log_probs(chunk):
            logits = self._run.backbone.logits(chunk[0])  # [SCORE_CHUNK, V] float32
            return tf.gather(logits, chunk[1], batch_dims=1) - tf.reduce_logsumexp(logits, axis=-1)

        log_probs = tf.map_fn(chunk_log_probs, (hidden, targets), fn_output_signature=tf.float32,
                              parallel_iterations=1)
        return tf.reshape(log_probs, [-1])[:count]

    def _embed(self, prompt):
        """Mean of the final (normalized) hidden states over the prompt's tokens, BOS included: [B, D]."""
        tokens = self._prompt_tokens(prompt)
        with tf.control_dependencies([self._check_length(tokens, "")]):
            token_ids = tf.cast(tokens.to_tensor(self._run.tokenizer.pad_token_id), tf.int32)
        padding_mask = tf.sequence_mask(tokens.row_lengths(), tf.shape(token_ids)[1], dtype=tf.int32)
        hidden = tf.cast(self._hidden_states(token_ids, padding_mask), tf.float32)
        weights = tf.cast(padding_mask, tf.float32)[:, :, None]
        return {"embedding": tf.reduce_sum(hidden * weights, axis=1) / tf.reduce_sum(weights, axis=1)}
