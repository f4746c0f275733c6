"""Prompts and images into Gemma 3 model inputs, in TensorFlow ops (eager, `tf.function`, `tf.data`).

Names and behaviour follow keras-hub's `Gemma3CausalLMPreprocessor` and `Gemma3ImageConverter`:
each `<start_of_image>` in a prompt becomes `"\\n\\n<start_of_image>" + <img> x 256 +
"<end_of_image>\\n\\n"`, `vision_mask` marks the `<img>` positions and `vision_indices` lists
them per row, zero-padded to `max_images_per_prompt * num_vision_tokens_per_image`.
"""

import keras
import numpy as np
import tensorflow as tf

from gemma3_tf import architecture, checkpoints, filesystem
from gemma3_tf.checkpoints import keras_preset
from gemma3_tf.refusals import InputError, assert_rows, assert_that, raise_first
from gemma3_tf.request_limits import MAX_IMAGE_PIXELS
from gemma3_tf.tokenizer import Gemma3Tokenizer

START_OF_IMAGE = "<start_of_image>"
# The first bytes of the formats `tf.io.decode_image` reads.
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


def encoded_image_shape(image):
    """[height, width] (int64) of one encoded JPEG, PNG, GIF or BMP image (a scalar string), read from its header
    without decoding it; [0, 0] for other bytes."""
    head = tf.io.decode_raw(tf.strings.substr(tf.strings.substr(image, 0, 32) + b"\0" * 32, 0, 32), tf.uint8)
    head = tf.cast(head, tf.int64)

    def number(start, size, big_endian):  # an unsigned integer of `size` bytes at `start`
        places = range(size - 1, -1, -1) if big_endian else range(size)
        return sum(head[start + i] * (1 << (8 * place)) for i, place in zip(range(size), places))

    def signed32(value):
        return tf.abs(tf.where(value >= 1 << 31, value - (1 << 32), value))

    starts_with = lambda signature: tf.strings.substr(image, 0, len(signature)) == signature  # noqa: E731
    # PNG: IHDR's width and height (big-endian) at 16; GIF: the screen's (little-endian 16-bit) at 6; BMP: the
    # DIB header's (little-endian 32-bit; a negative height is a top-down image) at 18.
    shape = tf.case([
        (starts_with(IMAGE_SIGNATURES[1]), lambda: tf.stack([number(20, 4, True), number(16, 4, True)])),
        (starts_with(b"GIF8"), lambda: tf.stack([number(8, 2, False), number(6, 2, False)])),
        (starts_with(b"BM"), lambda: tf.stack([signed32(number(22, 4, False)), signed32(number(18, 4, False))])),
        (starts_with(IMAGE_SIGNATURES[0]), lambda: tf.cast(tf.image.extract_jpeg_shape(image)[:2], tf.int64)),
    ], default=lambda: tf.zeros([2], tf.int64))
    return tf.reshape(shape, [2])


def prompts_not_empty(prompts, field="prompt"):
    """The check (for `assert_rows` / `raise_first`) that no prompt of `prompts` [B] is empty or blank."""
    return (tf.strings.length(tf.strings.strip(prompts)) > 0, "empty_prompt",
            f"`{field}[{{}}]` is empty; a prompt needs at least one character.")


def assert_prompts_not_empty(prompts):
    return assert_rows(*prompts_not_empty(prompts))


def images_in_front(prompt, num_images):
    """`prompt` with `num_images` `<start_of_image>` markers in front when it has none: where a prompt
    does not say where its images go, they come first."""
    if num_images and START_OF_IMAGE not in prompt:
        return START_OF_IMAGE * num_images + prompt
    return prompt


def chat_prompt(turns, add_generation_prompt=True):
    """Gemma's chat format for `turns`: [{"role": "user"|"model"|"system", "content": str}, ...].

    Gemma has no system role: a system turn is prepended to the first user turn, as its chat
    template does. With `add_generation_prompt`, the text ends where the model's turn begins.
    """
    text, system = "", None
    for number, turn in enumerate(turns):
        role, content = turn.get("role"), turn.get("content")
        if role not in ("user", "model", "system") or not isinstance(content, str):
            raise InputError("invalid_inputs", "turns", f"`turns[{number}]` must be {{'role': "
                             f"'user'|'model'|'system', 'content': str}}. Received: {turn!r}")
        if role == "system":
            system = content
            continue
        if system is not None and role == "user":
            content, system = f"{system}\n\n{content}", None
        text += f"<start_of_turn>{role}\n{content}<end_of_turn>\n"
    if add_generation_prompt:
        text += "<start_of_turn>model\n"
    return text


def training_targets(features):
    """Training features (`token_ids`, `padding_mask`, `loss_mask`, optional vision inputs; [B, T] or
    [T]) -> (model inputs, labels, sample_weight): position t is trained to predict token t + 1,
    weighted where that token is a response token."""

    def shift(values):  # values[..., t + 1] at t, 0 at the end
        paddings = [[0, 0]] * (values.shape.rank - 1) + [[0, 1]]
        return tf.pad(values[..., 1:], paddings)

    inputs = {key: value for key, value in features.items() if key != "loss_mask"}
    labels = shift(features["token_ids"])
    weights = tf.cast(shift(features["loss_mask"] * features["padding_mask"]), tf.float32)
    return inputs, labels, weights


@keras.saving.register_keras_serializable(package="gemma3_tf")
class Gemma3ImageConverter(keras.layers.Layer):
    """Images -> float32 [..., image_size, image_size, 3] in [-1, 1] (resize, then x / 127.5 - 1).

    Takes encoded JPEG/PNG/GIF/BMP bytes (a string tensor), or pixel arrays [H, W, 3] (uint8, or
    float in [0, 255]). Resizing is bilinear without cropping, as HF's Gemma 3 image processor.
    """

    def __init__(self, image_size=896, **kwargs):
        super().__init__(**kwargs)
        self.image_size = image_size
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self.built = True

    def resize(self, image):
        """One image (encoded bytes or [H, W, 3]) -> float32 [image_size, image_size, 3] in [0, 255]."""
        if image.dtype == tf.string:
            image = tf.io.decode_image(image, channels=3, expand_animations=False)
        return tf.image.resize(tf.cast(image, tf.float32), [self.image_size, self.image_size])

    def _one(self, image):
        return self.resize(image) / 127.5 - 1.0

    def call(self, images):
        """One image (bytes or [H, W, 3]) or a batch (strings [N] or pixels [N, H, W, 3])."""
        encoded = isinstance(images, (bytes, str)) or getattr(images, "dtype", None) == tf.string
        images = tf.convert_to_tensor(images, tf.string if encoded else None)
        if images.shape.rank == (0 if encoded else 3):
            return self._one(images)
        return tf.map_fn(self._one, images, fn_output_signature=tf.float32)

    def decode_rows(self, padded, max_pixels):
        """Encoded images [B, N] (b"" where a row has fewer) -> [B, N, S, S, 3], zeros for the b"", in graph ops.
        Bytes of no known format and images over `max_pixels` (read from their headers) are refused before
        anything is decoded."""
        count, size = padded.shape[1], self.image_size
        known = padded == ""
        for signature in IMAGE_SIGNATURES:
            known |= tf.strings.substr(padded, 0, len(signature)) == signature
        with tf.control_dependencies([assert_rows(tf.reduce_all(known, axis=1), "image_unreadable",
                                                  "`images[{}]` holds bytes that are not a JPEG, PNG, GIF or BMP "
                                                  "image.")]):
            flat = tf.reshape(padded, [-1])

        def convert(image, index):
            height, width = tf.unstack(encoded_image_shape(image))
            with tf.control_dependencies([assert_that(
                    height * width <= max_pixels, "image_too_large",
                    f"`images[{{}}][{{}}]` is {{}} x {{}} pixels, over the max_image_pixels={max_pixels} of this "
                    "export.",
                    index // count, index % count, width, height)]):
                return self._one(image)

        pixels = tf.map_fn(lambda pair: tf.cond(pair[0] == "", lambda: tf.zeros([size, size, 3]),
                                                lambda: convert(*pair)),
                           (flat, tf.range(tf.size(flat))),
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        return tf.reshape(pixels, [-1, count, size, size, 3])

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size}


def _string_batch(values, name):
    """(a 1-D string tensor, batched?) for a string, a list of strings or a string tensor."""
    if isinstance(values, str):
        return tf.constant([values]), False
    if isinstance(values, (list, tuple)):
        if not all(isinstance(v, str) for v in values):
            raise InputError("invalid_dtype", name, f"`{name}` must be a string or a list of strings. "
                             f"Received: {values!r}")
        return tf.constant(values, tf.string), True
    values = tf.convert_to_tensor(values)
    if values.dtype != tf.string or values.shape.rank not in (0, 1):
        raise InputError("invalid_dtype", name, f"`{name}` must be a string or a 1-D batch of strings. "
                         f"Received: {values!r}")
    return (values[None], False) if values.shape.rank == 0 else (values, True)


def _image_lists(images, batch, batched):
    """Images as one list per prompt, each image encoded bytes or an [H, W, 3] array."""
    if images is None:
        return None

    def as_list(row):
        if isinstance(row, (bytes, str)) or (isinstance(row, np.ndarray) and row.ndim == 3):
            return [row]
        return list(row)

    rows = [as_list(row) for row in (images if batched else [images])]
    if len(rows) != batch:
        raise InputError("invalid_shape", "images",
                         f"`images` has {len(rows)} rows for {batch} prompts: give one list per prompt.")
    return rows


@keras.saving.register_keras_serializable(package="gemma3_tf")
class Gemma3CausalLMPreprocessor(keras.layers.Layer):
    """Prompts (and responses, for training) -> `token_ids`, `padding_mask` (+ image inputs).

    Args:
        tokenizer: a `Gemma3Tokenizer`.
        image_converter: a `Gemma3ImageConverter` for a model with a vision encoder, else None.
        sequence_length: packed length; longer prompts are an error for generation, and
            training examples are cut at the end (the response loses its tail).
        add_start_token, add_end_token: BOS before the prompt; EOS after the response (training).
        max_images_per_prompt, num_vision_tokens_per_image: the image block layout.
    """

    def __init__(self, tokenizer, image_converter=None, sequence_length=1024, add_start_token=True,
                 add_end_token=True, max_images_per_prompt=2, num_vision_tokens_per_image=256, **kwargs):
        super().__init__(**kwargs)
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self.built = True
        self.tokenizer = tokenizer
        self.image_converter = image_converter
        self.sequence_length = sequence_length
        self.add_start_token = add_start_token
        self.add_end_token = add_end_token
        self.max_images_per_prompt = max_images_per_prompt
        self.num_vision_tokens_per_image = num_vision_tokens_per_image

    @property
    def text_only(self):
        return self.image_converter is None

    # --- prompts -------------------------------------------------------------------------
    def prompt_checks(self, prompts, num_images, field="prompt"):
        """What prompts [B] (image markers not expanded) that come with `num_images` [B] images must satisfy:
        a list of `assert_rows` arguments. One definition for the graph (`serving_features`) and for eager
        callers (`generate_preprocess`, the preprocess job: `refusals.raise_first`). A prompt without
        `<start_of_image>` gets its images in front (`images_in_front`)."""
        markers = tf.cast(tf.strings.split(prompts, START_OF_IMAGE).row_lengths() - 1, tf.int32)
        has_text, code, message = prompts_not_empty(prompts, field)
        checks = [(has_text | (num_images > 0), code, message)]  # an image alone is a prompt
        if self.text_only:
            return checks + [((num_images == 0) & (markers == 0), "images_not_supported",
                              f"`{field}[{{}}]` has images or {START_OF_IMAGE}, but this model has no vision "
                              "encoder.")]
        limit = self.max_images_per_prompt
        return checks + [
            (markers <= limit, "too_many_images",
             f"`{field}[{{}}]` has {{}} {START_OF_IMAGE}; at most `max_images_per_prompt`={limit} are allowed.",
             markers),
            (num_images <= limit, "too_many_images",
             f"`images[{{}}]` holds {{}} images, more than `max_images_per_prompt`={limit}.", num_images),
            ((markers == 0) | (markers == num_images), "image_count_mismatch",
             f"`{field}[{{}}]` has {{}} {START_OF_IMAGE} but `images[{{}}]` holds {{}} images: a number of markers "
             "other than its number of `images`; give one image per marker, or none to put the images in front.",
             markers, tf.range(tf.shape(prompts)[0]), num_images)]

    def _images_in_front(self, prompts, num_images):
        """`images_in_front` of each prompt [B] with its `num_images` [B]."""
        markers = tf.strings.split(prompts, START_OF_IMAGE).row_lengths() - 1
        in_front = tf.strings.reduce_join(
            tf.where(tf.range(self.max_images_per_prompt)[None, :] < num_images[:, None], START_OF_IMAGE, ""), axis=1)
        return tf.where(markers > 0, prompts, in_front + prompts)

    def _expand_images(self, prompts):
        block = (f"\n\n{START_OF_IMAGE}" + self.tokenizer.image_placeholder * self.num_vision_tokens_per_image
                 + f"{self.tokenizer.end_of_image_token}\n\n")
        return tf.strings.regex_replace(prompts, START_OF_IMAGE, block.replace("\\", "\\\\"))

    def _tokenize(self, texts, add_start):
        tokens = self.tokenizer.tokenize(texts)
        if add_start:
            bos = tf.fill([tokens.nrows(), 1], tf.cast(self.tokenizer.start_token_id, tokens.dtype))
            tokens = tf.concat([bos, tokens], axis=1)
        return tokens

    def _check_length(self, sequence_length, lengths):
        """The eager refusal of prompts of more than `sequence_length` tokens (`lengths` [B])."""
        longest = int(np.max(lengths.numpy())) if len(lengths) else 0
        if longest > sequence_length:
            row = int(np.argmax(lengths.numpy()))
            raise InputError("too_long", "prompts", f"`prompts[{row}]` is {longest} tokens (with BOS and image "
                             f"tokens); the maximum is `sequence_length`={sequence_length}.")

    def _pack(self, tokens, sequence_length):
        token_ids = tokens.to_tensor(default_value=self.tokenizer.pad_token_id, shape=[None, sequence_length])
        padding_mask = tf.sequence_mask(tf.minimum(tokens.row_lengths(), sequence_length), sequence_length,
                                        dtype=tf.int32)
        return tf.cast(token_ids, tf.int32), padding_mask

    def _vision_positions(self, token_ids, num_images):
        """`vision_mask` [B, T] and `vision_indices` [B, num_images * tokens per image] (zero-padded)."""
        vision_mask = tf.cast(token_ids == self.tokenizer.image_placeholder_id, tf.int32)
        positions = tf.ragged.boolean_mask(
            tf.broadcast_to(tf.range(tf.shape(token_ids)[1]), tf.shape(token_ids)), vision_mask > 0)
        vision_indices = positions.to_tensor(default_value=0,
                                             shape=[None, num_images * self.num_vision_tokens_per_image])
        return {"vision_mask": vision_mask, "vision_indices": tf.cast(vision_indices, tf.int32)}

    def _vision_inputs(self, token_ids, images):
        """Images padded to `max_images_per_prompt` per row (none at all for a text-only batch)."""
        has_images = images is not None and any(images)
        count = self.max_images_per_prompt if has_images else 0
        size = self.image_converter.image_size
        pixels = tf.zeros([tf.shape(token_ids)[0], count, size, size, 3])
        if count:
            pixels = tf.stack([
                tf.stack(self._convert_row(row, number) + [tf.zeros([size, size, 3])] * (count - len(row)))
                for number, row in enumerate(images)])
        return {"images": pixels, **self._vision_positions(token_ids, count)}

    def _convert_row(self, row, number):
        converted = []
        for index, image in enumerate(row):
            try:
                converted.append(self.image_converter(image))
            except (tf.errors.InvalidArgumentError, ValueError) as error:
                message = getattr(error, "message", str(error)).splitlines()[0]
                raise InputError("image_unreadable", "images", f"`images[{number}][{index}]` is not a readable "
                                 "image (expected encoded "
                                 f"JPEG/PNG/GIF/BMP bytes or an [H, W, 3] array): {message}") from error
        return converted

    def generate_preprocess(self, x, sequence_length=None):
        """str | [str] | {"prompts", "images"?} -> model inputs for `Gemma3CausalLM.generate`.

        `images` per prompt: a list of encoded image bytes or [H, W, 3] arrays, one per
        `<start_of_image>` of that prompt (a prompt without any gets its images in front, as in the export).
        """
        sequence_length = sequence_length or self.sequence_length
        images = None
        if isinstance(x, dict):
            if "prompts" not in x:
                raise InputError("invalid_inputs", "inputs",
                                 f"`inputs` must hold 'prompts'. Received keys: {sorted(x)}")
            prompts, images = x["prompts"], x.get("images")
        else:
            prompts = x
        prompts, batched = _string_batch(prompts, "prompts")
        batch = prompts.shape[0]  # None inside tf.data / tf.function
        images = _image_lists(images, batch, batched)
        eager = tf.executing_eagerly()  # checks of values need them; traced graphs (tf.data) rely on shapes
        if eager:
            num_images = tf.constant([len(row) for row in images] if images else [0] * batch, tf.int32)
            raise_first(self.prompt_checks(prompts, num_images, "prompts"))
            if images and not self.text_only:
                prompts = self._images_in_front(prompts, num_images)
        texts = prompts if self.text_only else self._expand_images(prompts)
        tokens = self._tokenize(texts, self.add_start_token)
        if eager:
            self._check_length(sequence_length, tokens.row_lengths())
        token_ids, padding_mask = self._pack(tokens, sequence_length)
        out = {"token_ids": token_ids, "padding_mask": padding_mask}
        if not self.text_only:
            out.update(self._vision_inputs(token_ids, images))
        return out if batched else {k: v[0] for k, v in out.items()}

    @property
    def hidden_token_ids(self):
        """The ids completions leave out: padding, BOS, EOS, turn and image markers but `<start_of_image>`."""
        return sorted(set(self.tokenizer.special_token_ids) - {self.tokenizer.start_of_image_token_id})

    def generate_postprocess(self, token_ids):
        """Generated ids [B, N] (or [N]) -> strings, without padding, BOS, EOS or turn markers."""
        token_ids = np.asarray(token_ids)
        batched = token_ids.ndim == 2
        rows = token_ids if batched else token_ids[None]
        strip = set(self.hidden_token_ids)
        kept = tf.ragged.constant([[int(t) for t in row if int(t) not in strip] for row in rows], dtype=tf.int32)
        texts = [t.decode("utf-8") for t in self.tokenizer.detokenize(kept).numpy()]
        return texts if batched else texts[0]

    # --- in-graph, for the SavedModel -------------------------------------------------------
    def serving_features(self, prompts, images, max_image_pixels=MAX_IMAGE_PIXELS):
        """`generate_preprocess` in TensorFlow ops only, for a SavedModel signature.

        Args:
            prompts: [B] strings.
            images: [B, N] encoded JPEG/PNG/GIF/BMP bytes, b"" where a row has fewer images.
                Rows whose prompt has no `<start_of_image>` get one per image in front.
        Returns: `token_ids`, `padding_mask` [B, T] (T the longest prompt) and, with a vision encoder,
            `images` [B, max_images_per_prompt, S, S, 3], `vision_indices` and `vision_mask`.
        Bad rows raise InvalidArgumentError when the graph runs, naming the first such row; so do images over
        `max_image_pixels`, before they are decoded.
        """
        given = tf.strings.length(images) > 0
        num_images = tf.reduce_sum(tf.cast(given, tf.int32), axis=1)
        with tf.control_dependencies([assert_rows(*check) for check in self.prompt_checks(prompts, num_images)]):
            prompts = tf.identity(prompts)
        if not self.text_only:
            prompts = self._images_in_front(prompts, num_images)
        texts = prompts if self.text_only else self._expand_images(prompts)
        tokens = self._tokenize(texts, self.add_start_token)
        token_ids = tf.cast(tokens.to_tensor(default_value=self.tokenizer.pad_token_id), tf.int32)
        out = {"token_ids": token_ids, "padding_mask": tf.sequence_mask(tokens.row_lengths(), tf.shape(token_ids)[1],
                                                                        dtype=tf.int32)}
        if not self.text_only:
            padded = tf.ragged.boolean_mask(images, given).to_tensor("", shape=[None, self.max_images_per_prompt])
            out["images"] = self.image_converter.decode_rows(padded, max_image_pixels)
            out.update(self._vision_positions(token_ids, self.max_images_per_prompt))
        return out

    # --- training ------------------------------------------------------------------------
    def training_features(self, x, sequence_length=None):
        """{"prompts", "responses"} -> the training features of `gemma3_tf.data`, each [B, T]:
        `token_ids`, `padding_mask`, `loss_mask` (1 on response tokens, EOS included) and, for a
        model with images, `vision_mask` and `vision_indices` [B, max_images_per_prompt * tokens per
        image]. Each `<start_of_image>` becomes the image block, as for generation; examples longer
        than `sequence_length` lose their tail. Also returns `prompt_lengths` [B] (BOS and image
        tokens included), so that a caller can reject prompts that leave no room for the response.
        """
        sequence_length = sequence_length or self.sequence_length
        prompts, batched = _string_batch(x["prompts"], "prompts")
        responses, _ = _string_batch(x["responses"], "responses")
        tokens, is_response, prompt_lengths = self.prompt_and_response_tokens(prompts, responses, self.add_end_token)
        token_ids, padding_mask = self._pack(tokens, sequence_length)
        features = {"token_ids": token_ids, "padding_mask": padding_mask,
                    "loss_mask": tf.cast(is_response.to_tensor(shape=[None, sequence_length]), tf.int32)}
        if not self.text_only:
            features.update(self._vision_positions(token_ids, self.max_images_per_prompt))
        features["prompt_lengths"] = prompt_lengths
        return features if batched else {k: v[0] for k, v in features.items()}

    def prompt_and_response_tokens(self, prompts, responses, add_end_token):
        """The packing of a prompt and its response, for training and for scoring: prompts [B] and responses [B]
        strings -> ragged (tokens, is_response) [B, (n)] and the prompts' lengths [B]. The prompt's tokens (BOS
        and image blocks as for generation) then the response's, then EOS with `add_end_token`; `is_response` is
        1 on the response's."""
        prompt_tokens = self._tokenize(prompts if self.text_only else self._expand_images(prompts),
                                       self.add_start_token)
        response_tokens = self.tokenizer.tokenize(responses)
        if add_end_token:
            eos = tf.fill([response_tokens.nrows(), 1], tf.cast(self.tokenizer.end_token_id, response_tokens.dtype))
            response_tokens = tf.concat([response_tokens, eos], axis=1)
        tokens = tf.concat([prompt_tokens, response_tokens], axis=1)
        is_response = tf.concat([tf.zeros_like(prompt_tokens), tf.ones_like(response_tokens)], axis=1)
        return tokens, is_response, tf.cast(prompt_tokens.row_lengths(), tf.int32)

    def call(self, x, y=None, sample_weight=None, sequence_length=None):
        """{"prompts", "responses"} -> (inputs, labels, sample_weight) for `fit`: next-token labels,
        weight 1 on response tokens only. Text only: image training data comes from the TFRecord
        pipeline (`gemma3_tf.data`)."""
        features = self.training_features(x, sequence_length)
        features = {key: features[key] for key in ("token_ids", "padding_mask", "loss_mask")}
        return training_targets(features)

    # --- presets -------------------------------------------------------------------------
    def get_config(self):
        return {
            **super().get_config(),
            "tokenizer": keras.layers.serialize(self.tokenizer),
            "image_converter": None if self.image_converter is None else keras.layers.serialize(self.image_converter),
            "sequence_length": self.sequence_length,
            "add_start_token": self.add_start_token,
            "add_end_token": self.add_end_token,
            "max_images_per_prompt": self.max_images_per_prompt,
            "num_vision_tokens_per_image": self.num_vision_tokens_per_image,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["tokenizer"] = keras.layers.deserialize(config["tokenizer"])
        if config.get("image_converter") is not None:
            config["image_converter"] = keras.layers.deserialize(config["image_converter"])
        return cls(**config)

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """The preprocessor for a preset: its tokenizer, and an image converter when the model has vision."""
        checkpoint = checkpoints.open_checkpoint(preset)
        if hasattr(checkpoint, "preprocessor_config"):  # keras-hub presets store their packing settings
            kwargs = {**checkpoint.preprocessor_config(), **kwargs}
        vision = checkpoint.backbone_config().get("vision_encoder")
        if vision is not None:
            kwargs.setdefault("image_converter", Gemma3ImageConverter(vision["image_size"]))
            kwargs.setdefault("num_vision_tokens_per_image", architecture.tokens_per_image(
                vision["image_size"], vision["patch_size"], vision["pool_size"]))
        return cls(Gemma3Tokenizer.from_preset(checkpoint), **kwargs)

    def save_to_preset(self, preset_dir):
        """The tokenizer's files and keras-hub's `preprocessor.json` (and `image_converter.json`)."""
        with filesystem.local_directory(preset_dir) as local_dir:
            keras_preset.save_preprocessor(self, local_dir)

    def export_to_transformers(self, path):
        """The tokenizer's transformers file (`tokenizer.model`)."""
        self.tokenizer.export_to_transformers(path)
