"""Where presets come from: local paths, the Hugging Face and Kaggle caches, built-in names.

No test reaches a hub: cached files are laid out with the hubs' own cache code, and an
unreachable hub is simulated (HF's offline mode; a failing kagglehub download)."""

import pathlib
import shutil

import numpy as np
import pytest

import gemma3_tf
from gemma3_tf.checkpoints import PresetUnavailableError, open_checkpoint
from keras_hub_oracle import save_keras_hub_preset

HF_TINY = pathlib.Path(__file__).parent / "data" / "hf_tiny"


@pytest.fixture
def hf_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    return tmp_path / "hf_cache"


def test_hf_uses_the_local_cache_first(hf_offline):
    snapshot = hf_offline / "models--someone--tiny-gemma3" / "snapshots" / ("a" * 40)
    shutil.copytree(HF_TINY / "gemma3_text", snapshot)
    (hf_offline / "models--someone--tiny-gemma3" / "refs").mkdir()
    (hf_offline / "models--someone--tiny-gemma3" / "refs" / "main").write_text("a" * 40)
    backbone = gemma3_tf.Gemma3Backbone.from_preset("hf://someone/tiny-gemma3", progress=False)
    local = gemma3_tf.Gemma3Backbone.from_preset(str(HF_TINY / "gemma3_text"), progress=False)
    for ours, reference in zip(backbone.weights, local.weights):
        np.testing.assert_array_equal(ours.numpy(), reference.numpy())


def test_hf_offline_and_uncached_says_what_to_download(hf_offline):
    with pytest.raises(PresetUnavailableError, match=r"Cannot fetch `config.json` of hf://google/gemma-3-1b-pt .*"
                                                     r"huggingface-cli download google/gemma-3-1b-pt --local-dir DIR"):
        gemma3_tf.Gemma3Backbone.from_preset("hf://google/gemma-3-1b-pt")


def cache_kaggle_model(handle, tiny_proto):
    """Lays a preset out as a completed kagglehub download of `handle` (with a version)."""
    from kagglehub.cache import Cache
    from kagglehub.handle import parse_model_handle

    parsed = parse_model_handle(handle)
    reference = save_keras_hub_preset(Cache().get_path(parsed), tiny_proto)
    Cache().mark_as_complete(parsed)
    return reference


@pytest.fixture
def kaggle_offline(monkeypatch, tmp_path):
    import kagglehub

    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kaggle_cache"))

    def unreachable(*args, **kwargs):
        raise ConnectionError("Kaggle is unreachable")

    monkeypatch.setattr(kagglehub, "model_download", unreachable)


def test_kaggle_uses_the_newest_cached_version(kaggle_offline, tiny_proto):
    cache_kaggle_model("keras/gemma3/keras/tiny/1", tiny_proto)
    newest = cache_kaggle_model("keras/gemma3/keras/tiny/2", tiny_proto)
    ours = gemma3_tf.Gemma3Backbone.from_preset("kaggle://keras/gemma3/keras/tiny")
    inputs = {"token_ids": np.array([[2, 5, 9]], "int32"), "padding_mask": np.ones((1, 3), "int32")}
    np.testing.assert_allclose(np.asarray(ours(inputs)), np.asarray(newest(inputs)), atol=1e-5)


def test_builtin_name_resolves_to_its_kaggle_handle(kaggle_offline, tiny_proto):
    assert gemma3_tf.Gemma3Backbone.presets["gemma3_1b"]["kaggle_handle"] == "kaggle://keras/gemma3/keras/gemma3_1b/3"
    cache_kaggle_model("keras/gemma3/keras/gemma3_1b/3", tiny_proto)
    tokenizer = gemma3_tf.Gemma3Tokenizer.from_preset("gemma3_1b")
    assert tokenizer.vocabulary_size() > 300
    with pytest.raises(PresetUnavailableError, match=r"Cannot fetch `config.json` of kaggle://keras/gemma3/"
                                                     r"keras/gemma3_4b/1 .*kagglehub.model_download"):
        gemma3_tf.Gemma3Backbone.from_preset("gemma3_4b")


def test_builtin_name_without_weights_builds_the_architecture(kaggle_offline):
    import tensorflow as tf

    with tf.Graph().as_default():  # symbolic: no memory for a billion weights
        backbone = gemma3_tf.Gemma3Backbone.from_preset("gemma3_1b", load_weights=False)
    assert backbone.count_params() == gemma3_tf.Gemma3Backbone.presets["gemma3_1b"]["params"]


def test_unknown_presets_are_named():
    with pytest.raises(ValueError, match=r"`preset` 'gemma3_2b' is neither an existing file or directory \(local "
                                         r"or gs://\.\.\.\), .*"
                                         r"gemma3_270m_q4_k_m, gemma3_270m, "):
        open_checkpoint("gemma3_2b")
    with pytest.raises(ValueError, match=r"expected hf://OWNER/NAME"):
        open_checkpoint("hf://just-a-name")
    with pytest.raises(ValueError, match=r"expected kaggle://OWNER/MODEL/FRAMEWORK/VARIATION"):
        open_checkpoint("kaggle://keras/gemma3")
    with pytest.raises(ValueError, match=r"'s3://bucket/gemma3': TensorFlow has no file system for this scheme"):
        open_checkpoint("s3://bucket/gemma3")
