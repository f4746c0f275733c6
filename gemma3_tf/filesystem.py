"""Any path a user gives may be a `scheme://` path (gs://, s3://, hdfs://, ram://): it goes through `tf.io.gfile`.

`os.path`, `open()` and h5py would write `gs://B/x` to a local folder named `gs:`. h5py, safetensors
and the GGUF reader need local files, so their files are staged: `local_directory` writes into a local
scratch directory that is copied to the destination afterwards, `local_copy` reads a remote file through
a local copy. Local paths pass through untouched.
"""

import contextlib
import os
import tempfile

import tensorflow as tf


def is_remote(path):
    return "://" in os.fspath(path)


def absolute(path):
    """`path` made absolute when local; a `scheme://` path as it is (`os.path.abspath` makes it `CWD/gs:/...`)."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def copy_tree(source, destination, last=()):
    """Copies the files under `source` to `destination` through tf.io.gfile; the files named in `last`
    after all others (a reader that waits for them then finds every other file in place)."""
    files = []
    for root, _, names in tf.io.gfile.walk(source):
        relative = os.path.relpath(root, source)
        target = destination if relative == "." else os.path.join(destination, relative)
        tf.io.gfile.makedirs(target)
        files += [(os.path.join(root, name), os.path.join(target, name)) for name in names]
    for source_file, target_file in sorted(files, key=lambda pair: os.path.basename(pair[0]) in last):
        tf.io.gfile.copy(source_file, target_file, overwrite=True)


@contextlib.contextmanager
def local_directory(directory, last=()):
    """Yields a local directory whose files end up in `directory`: `directory` itself when local, else a
    scratch directory copied there when the block completes (nothing is copied if it raises), the files
    named in `last` after all others."""
    if not is_remote(directory):
        os.makedirs(directory, exist_ok=True)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="gemma3_tf-") as scratch:
        yield scratch
        copy_tree(scratch, directory, last=last)


def local_copy(path, scratch_dir):
    """A local path holding the file `path`: `path` itself when local, else a copy under `scratch_dir`."""
    if not is_remote(path):
        return path
    target = os.path.join(scratch_dir, path.split("://", 1)[1].lstrip("/"))
    if not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tf.io.gfile.copy(path, target + ".partial", overwrite=True)
        os.replace(target + ".partial", target)
    return target
