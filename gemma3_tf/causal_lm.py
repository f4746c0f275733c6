import keras
import numpy as np

from gemma3_tf import checkpoints, filesystem, samplers
from gemma3_tf.backbone import Gemma3Backbone
from gemma3_tf.generation import Decoder
from gemma3_tf.preprocessing import Gemma3CausalLMPreprocessor
from gemma3_tf.presets import PRESETS
from gemma3_tf.refusals import InputError
from gemma3_tf.tokenizer import GEMMA3_STOP_TOKEN_IDS


@keras.saving.register_keras_serializable(package="gemma3_tf")
class Gemma3CausalLM(keras.Model):
    """Gemma 3 language model head: the backbone's hidden states times the tied embedding.

    Called on the backbone's inputs it returns logits [B, T, vocabulary_size],
    with the final logit soft cap applied when the backbone has one. `generate` continues
    prompts with the KV-cache decoder of `gemma3_tf.generation`.
    """

    presets = PRESETS

    def __init__(self, backbone, preprocessor=None, **kwargs):
        inputs = backbone.input
        # keras-hub's graph, for Keras' bookkeeping (layers, weights, output spec); `call` runs the model.
        logits = keras.ops.cast(backbone.token_embedding(backbone(inputs), reverse=True), "float32")
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        self.backbone = backbone
        self.preprocessor = preprocessor

    def call(self, inputs, training=None):
        return self.backbone.logits(self.backbone(inputs, training=training))

    def __call__(self, inputs, *args, **kwargs):
        # Before Functional's own input handling, whose errors do not name the field.
        self.backbone.validate_inputs(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.layers.serialize(self.backbone),
            "preprocessor": None if self.preprocessor is None else keras.layers.serialize(self.preprocessor),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        if config.get("preprocessor") is not None:
            config["preprocessor"] = keras.layers.deserialize(config["preprocessor"])
        return cls(**config)

    @classmethod
    def from_preset(cls, preset, load_weights=True, dtype=None, progress=True, **kwargs):
        """A causal LM from any checkpoint `Gemma3Backbone.from_preset` reads (same arguments)."""
        checkpoint = checkpoints.open_checkpoint(preset, load_weights)
        backbone = Gemma3Backbone.from_preset(checkpoint, load_weights=load_weights, dtype=dtype, progress=progress)
        if "preprocessor" not in kwargs and hasattr(checkpoint, "tokenizer_proto"):
            try:
                kwargs["preprocessor"] = Gemma3CausalLMPreprocessor.from_preset(checkpoint)
            except FileNotFoundError:  # a checkpoint without a tokenizer: token ids in, token ids out
                kwargs["preprocessor"] = None
        return cls(backbone, **kwargs)

    def save_to_preset(self, preset_dir, max_shard_size=10, merge_lora=True):
        """Writes a keras-hub preset directory: the backbone, and the preprocessor's files when it has one.
        `merge_lora=False` keeps LoRA adapters apart from the base weights (see `Gemma3Backbone`)."""
        with filesystem.local_directory(preset_dir) as local_dir:  # one copy to gs://... at the end
            self.backbone.save_to_preset(local_dir, max_shard_size=max_shard_size, merge_lora=merge_lora)
            if self.preprocessor is not None:
                self.preprocessor.save_to_preset(local_dir)

    def export_to_transformers(self, path):
        """A transformers checkpoint of the model (and its tokenizer, with a preprocessor), what `gemma3-tf
        convert --format hf` writes: `Gemma3ForCausalLM` (text) or `Gemma3ForConditionalGeneration` (vision)."""
        checkpoints.huggingface.save(self.backbone, path, self.preprocessor.tokenizer if self.preprocessor else None)

    def compile(self, *args, sampler="greedy", **kwargs):
        """Keras `compile`, plus the `sampler` that `generate` uses (a name or a `gemma3_tf.samplers` instance)."""
        super().compile(*args, **kwargs)
        self.sampler = samplers.get(sampler)
        self._decoder = None

    def generate_ids(self, token_ids, padding_mask, max_new_tokens, stop_token_ids=GEMMA3_STOP_TOKEN_IDS, seed=None,
                     images=None, vision_indices=None, vision_mask=None, on_step=None):
        """New token ids [B, max_new_tokens] after right-padded prompts `token_ids`/`padding_mask` [B, T]
        (`max_new_tokens` an int, or one per row: then [B, the largest], pad after each row's own).

        One XLA-compiled prefill + decode loop per (batch, prompt-length bucket, new-token bucket),
        buckets being powers of two; a row stops after a token in `stop_token_ids` and is padded
        with 0 from there. `on_step(ids)` receives each step's ids [B] as they are generated (the
        decode steps then run one compiled call each).
        """
        if getattr(self, "_decoder", None) is None:
            self._decoder = Decoder(self.backbone, getattr(self, "sampler", "greedy"))
        vision = None if images is None else (images, vision_indices, vision_mask)
        return self._decoder(token_ids, padding_mask, max_new_tokens, stop_token_ids, seed=seed, vision=vision,
                             on_step=on_step)

    def generate(self, inputs, max_length=None, stop_token_ids="auto", strip_prompt=False, seed=None, stream=None):
        """Generates text after prompts, as keras-hub's `generate`.

        Args:
            inputs: a prompt string, a list of them, a dict with `prompts` and `images` (a list
                of encoded images or [H, W, 3] arrays per prompt, one per `<start_of_image>`, or in front
                of a prompt without any), or preprocessed `token_ids`/`padding_mask` (and image inputs).
            max_length: total tokens per row, prompt included (default: the preprocessor's
                `sequence_length`); must exceed the longest prompt.
            stop_token_ids: `"auto"` (`<eos>` and `<end_of_turn>`), ids, or None to run to `max_length`.
            strip_prompt: return the completions alone, without their prompts.
            seed: for random samplers (see `compile(sampler=...)`); None draws one.
            stream: a callable given, after each generated token, the new text of each row (a
                list, "" for rows with nothing new; one string for one prompt), or the new ids
                for token inputs.
        Returns: prompt + completion strings, or the completions with `strip_prompt` (one string for one
            prompt); for preprocessed token inputs, the new token ids [B, max_length - shortest prompt] (0
            after a row stops or reaches `max_length`). As in keras-hub, each row runs to `max_length`
            tokens of its own, so a shorter prompt gets more new tokens.
        """
        token_inputs = isinstance(inputs, dict) and "token_ids" in inputs
        if not token_inputs and self.preprocessor is None:
            raise ValueError("This Gemma3CausalLM has no preprocessor, so `generate` takes token inputs only: "
                             "a dict with `token_ids` and `padding_mask`.")
        max_length = max_length or (self.preprocessor.sequence_length if self.preprocessor else None)
        if max_length is None:
            raise ValueError("`max_length` is required for token inputs without a preprocessor.")
        if stop_token_ids == "auto":
            tokenizer = self.preprocessor.tokenizer if self.preprocessor else None
            stop_token_ids = tokenizer.stop_token_ids if tokenizer else GEMMA3_STOP_TOKEN_IDS
        features = inputs
        if not token_inputs:  # packed long enough that the check below, naming `max_length`, decides
            features = self.preprocessor.generate_preprocess(inputs, max(max_length, self.preprocessor.sequence_length))
        features = {key: np.asarray(value) for key, value in features.items()}
        batched = features["token_ids"].ndim == 2
        if not batched:
            features = {key: value[None] for key, value in features.items()}
        lengths = features["padding_mask"].sum(-1)
        longest = int(lengths.max())
        if max_length <= longest:
            raise InputError("too_long", "max_length", f"`max_length` ({max_length}) must be greater than the "
                             f"longest prompt ({longest} tokens, BOS and image tokens included).")
        vision = {}
        if features.get("images") is not None and features["images"].shape[1] > 0:
            vision = {"images": features["images"], "vision_indices": features["vision_indices"],
                      "vision_mask": features["vision_mask"][:, :longest]}
        on_step = None
        if stream is not None:
            on_step = (self._ids_stream(stream, batched) if token_inputs else
                       self._text_stream(stream, batched, max_length - lengths, stop_token_ids))
        new_ids = self.generate_ids(features["token_ids"][:, :longest], features["padding_mask"][:, :longest],
                                    max_length - lengths, stop_token_ids, seed, **vision, on_step=on_step)
        if token_inputs:
            return new_ids if batched else new_ids[0]
        prompts = inputs["prompts"] if isinstance(inputs, dict) else inputs
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        completions = self.preprocessor.generate_postprocess(new_ids)
        texts = completions if strip_prompt else [prompt + text for prompt, text in zip(prompts, completions)]
        return texts if batched else texts[0]

    @staticmethod
    def _ids_stream(stream, batched):
        return lambda ids: stream(ids if batched else ids[0])

    def _text_stream(self, stream, batched, limits, stop_token_ids):
        return _TextStream(self.preprocessor, stream, batched, limits, stop_token_ids)


class _TextStream:
    """An `on_step` that detokenizes each row's ids so far and passes on the text not yet sent: one
    call per generated token.

    Text ending in an incomplete UTF-8 character (U+FFFD from byte tokens whose other bytes are
    still to come) is held back, except at the last step, which sends all that is left.
    """

    def __init__(self, preprocessor, stream, batched, limits, stop_token_ids):
        self.preprocessor, self.stream, self.batched = preprocessor, stream, batched
        self.limits, self.stop_token_ids = limits, list(stop_token_ids or ())
        self.generated, self.sent = [], None

    def __call__(self, ids):
        self.generated.append(ids)
        generated = np.stack(self.generated, axis=1)
        last = (np.isin(generated, self.stop_token_ids).any(-1) | (len(self.generated) >= self.limits)).all()
        texts = self.preprocessor.generate_postprocess(generated)
        self.sent = self.sent or [""] * len(texts)
        pieces = []
        for row, text in enumerate(texts):
            text = text if last else text.rstrip("\ufffd")
            pieces.append(text[len(self.sent[row]):] if text.startswith(self.sent[row]) else "")
            self.sent[row] = max(self.sent[row], text, key=len)
        self.stream(pieces if self.batched else pieces[0])
