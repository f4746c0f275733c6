import keras

from gemma3_tf import checkpoints, samplers
from gemma3_tf.backbone import Gemma3Backbone
from gemma3_tf.generation import Decoder
from gemma3_tf.presets import PRESETS


@keras.saving.register_keras_serializable(package="gemma3_tf")
class Gemma3CausalLM(keras.Model):
    """Gemma 3 language model head: the backbone's hidden states times the tied embedding.

    Called on the backbone's inputs it returns logits [B, T, vocabulary_size],
    with the final logit soft cap applied when the backbone has one.
    """

    presets = PRESETS

    def __init__(self, backbone, preprocessor=None, **kwargs):
        inputs = backbone.input
        hidden_states = backbone(inputs)
        logits = backbone.token_embedding(hidden_states, reverse=True)
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        self.backbone = backbone
        self.preprocessor = preprocessor

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
        return cls(backbone, **kwargs)

    def save_to_preset(self, preset_dir, max_shard_size=10):
        """Writes a keras-hub preset directory: the backbone, and the preprocessor's files when it has one."""
        self.backbone.save_to_preset(preset_dir, max_shard_size=max_shard_size)
        if self.preprocessor is not None:
            self.preprocessor.save_to_preset(preset_dir)

    def compile(self, *args, sampler="greedy", **kwargs):
        """Keras `compile`, plus the `sampler` that `generate` uses (a name or a `gemma3_tf.samplers` instance)."""
        super().compile(*args, **kwargs)
        self.sampler = samplers.get(sampler)
        self._decoder = None

    def generate_ids(self, token_ids, padding_mask, max_new_tokens, stop_token_ids=(1, 106), seed=None,
                     images=None, vision_indices=None, vision_mask=None):
        """New token ids [B, max_new_tokens] after right-padded prompts `token_ids`/`padding_mask` [B, T].

        One XLA-compiled prefill + decode loop per (batch, prompt bucket, max_new_tokens); a row
        stops after a token in `stop_token_ids` and is padded with 0 from there.
        """
        key = (tuple(stop_token_ids or ()), id(getattr(self, "sampler", None)))
        if getattr(self, "_decoder", None) is None or self._decoder_key != key:
            self._decoder = Decoder(self.backbone, getattr(self, "sampler", "greedy"), stop_token_ids)
            self._decoder_key = key
        vision = None if images is None else (images, vision_indices, vision_mask)
        return self._decoder(token_ids, padding_mask, max_new_tokens, seed=seed, vision=vision)
