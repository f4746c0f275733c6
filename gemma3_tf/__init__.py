"""gemma3-tf: Gemma 3 in Keras 3 on TensorFlow."""

from gemma3_tf._lazy import lazy_attributes

__version__ = "0.1.0"

__all__ = [
    "Gemma3Backbone", "Gemma3CausalLM", "Gemma3CausalLMPreprocessor", "Gemma3ImageConverter",
    "Gemma3Tokenizer", "Gemma3VisionEncoder", "samplers",
]
__getattr__, __dir__ = lazy_attributes(__name__, {
    "Gemma3Backbone": "gemma3_tf.backbone:Gemma3Backbone",
    "Gemma3CausalLM": "gemma3_tf.causal_lm:Gemma3CausalLM",
    "Gemma3CausalLMPreprocessor": "gemma3_tf.preprocessing:Gemma3CausalLMPreprocessor",
    "Gemma3ImageConverter": "gemma3_tf.preprocessing:Gemma3ImageConverter",
    "Gemma3Tokenizer": "gemma3_tf.tokenizer:Gemma3Tokenizer",
    "Gemma3VisionEncoder": "gemma3_tf.vision_encoder:Gemma3VisionEncoder",
    "samplers": "gemma3_tf.samplers",
})
