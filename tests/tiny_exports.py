"""Tiny random Gemma 3 models exported as SavedModels, and the in-process generation they must equal.

The session fixtures `tiny_text_export` and `tiny_vision_export` (conftest.py) build them once:
the text one through `gemma3-tf export` on a saved preset, the vision one with XLA.
"""

import os

import numpy as np
import tensorflow as tf

import gemma3_tf
from gemma3_tf import cli
from gemma3_tf.export import export_model
from gemma3_tf.preprocessing import Gemma3CausalLMPreprocessor, Gemma3ImageConverter
from keras_hub_oracle import TEXT_CONFIG, VISION_CONFIG, randomize

PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy"]


def tiny_lm(proto, vision=False, seed=0, **config_overrides):
    config = dict(TEXT_CONFIG, vocabulary_size=400, final_logit_soft_cap=None, **config_overrides)
    encoder = gemma3_tf.Gemma3VisionEncoder(**VISION_CONFIG) if vision else None
    backbone = gemma3_tf.Gemma3Backbone(**config, vision_encoder=encoder)
    randomize(backbone, seed=seed, scale=0.5)
    preprocessor = Gemma3CausalLMPreprocessor(gemma3_tf.Gemma3Tokenizer(proto), Gemma3ImageConverter(28) if vision
                                              else None, sequence_length=64, num_vision_tokens_per_image=4)
    return gemma3_tf.Gemma3CausalLM(backbone, preprocessor)


def in_process_ids(causal_lm, prompts, max_new_tokens, sampler="greedy", seed=None, images=None, **kwargs):
    """New ids of `Gemma3CausalLM.generate_ids` after the preprocessor, the path `generate` takes."""
    causal_lm.compile(sampler=sampler)
    inputs = prompts if images is None else {"prompts": prompts, "images": images}
    features = causal_lm.preprocessor.generate_preprocess(inputs)
    longest = int(np.max(np.sum(features["padding_mask"], axis=-1)))
    vision = {}
    if images is not None:
        vision = {"images": features["images"], "vision_indices": features["vision_indices"],
                  "vision_mask": np.asarray(features["vision_mask"])[:, :longest]}
    return causal_lm.generate_ids(np.asarray(features["token_ids"])[:, :longest],
                                  np.asarray(features["padding_mask"])[:, :longest], max_new_tokens,
                                  seed=seed, **vision, **kwargs)


def in_process(causal_lm, prompts, max_new_tokens, sampler="greedy", seed=None, images=None):
    """The completions (`generate_postprocess`) of `in_process_ids`."""
    new_ids = in_process_ids(causal_lm, prompts, max_new_tokens, sampler, seed, images)
    return causal_lm.preprocessor.generate_postprocess(new_ids)


def make_text_export(proto, base_path):
    """(causal LM, version directory): a text model whose first prompt stops early, exported by the CLI."""
    causal_lm = tiny_lm(proto)
    # <eos>'s output embedding becomes a scaled copy of the first prompt's third greedy token's, so
    # that its logit wins by that step at the latest and the row stops.
    third = in_process_ids(causal_lm, PROMPTS[:1], 3, stop_token_ids=None)[0, 2]
    embeddings = causal_lm.backbone.token_embedding.embeddings
    eos = causal_lm.preprocessor.tokenizer.end_token_id
    embeddings.assign(tf.tensor_scatter_nd_update(embeddings, [[eos]], 1.5 * embeddings[third][None]))
    preset = os.path.join(base_path, "preset")
    causal_lm.save_to_preset(preset)
    cli.main(["export", "--preset", preset, "--model_base_path", os.path.join(base_path, "tiny"),
              "--max_length", "48"])
    return causal_lm, os.path.join(base_path, "tiny", "1")


def make_vision_export(proto, base_path):
    causal_lm = tiny_lm(proto, vision=True, seed=1)
    # Fewer warmup shapes than the default (one prompt bucket), each an XLA compile whenever the version loads.
    return causal_lm, export_model(causal_lm, os.path.join(base_path, "tiny_vision"), max_length=96,
                                   jit_compile=True, batch_sizes=(1, 2), warmup_prompt_tokens=16)
