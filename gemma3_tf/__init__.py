"""gemma3-tf: Gemma 3 in Keras 3 on TensorFlow."""

from gemma3_tf import samplers
from gemma3_tf.backbone import Gemma3Backbone
from gemma3_tf.causal_lm import Gemma3CausalLM
from gemma3_tf.preprocessing import Gemma3CausalLMPreprocessor, Gemma3ImageConverter
from gemma3_tf.tokenizer import Gemma3Tokenizer
from gemma3_tf.vision_encoder import Gemma3VisionEncoder

__version__ = "0.1.0"

__all__ = [
    "Gemma3Backbone", "Gemma3CausalLM", "Gemma3CausalLMPreprocessor", "Gemma3ImageConverter",
    "Gemma3Tokenizer", "Gemma3VisionEncoder", "samplers",
]
