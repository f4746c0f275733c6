"""Building blocks of the Gemma 3 decoder."""

from gemma3_tf.layers.attention import Gemma3Attention
from gemma3_tf.layers.attention_mask import compute_attention_mask
from gemma3_tf.layers.decoder_block import Gemma3DecoderBlock
from gemma3_tf.layers.interleave_embeddings import Gemma3InterleaveEmbeddings
from gemma3_tf.layers.rms_normalization import RMSNormalization
from gemma3_tf.layers.rotary_embedding import apply_rotary_embedding, rotation
