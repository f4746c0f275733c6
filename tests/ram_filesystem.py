"""`ram://` for Apache Beam: a Beam FileSystem over TensorFlow's in-process RAM file system.

Beam ships file systems for gs://, s3://, hdfs:// and Azure, each needing its service, and none in
memory. This one lets a Beam job in the test process write through `FileSystems` (as on Dataflow
with gs://) to the same `ram://` store that `tf.io.gfile` and the trainer read: a path that is not
local, so anything that wrote it through `os.path` or `open()` would land in a folder named `ram:`
instead. Importing the module registers the scheme (Beam finds FileSystem subclasses by `scheme()`).
"""

import posixpath

import tensorflow as tf
from apache_beam.io.filesystem import BeamIOError, CompressedFile, CompressionTypes, FileMetadata, FileSystem


class RamFileSystem(FileSystem):
    @classmethod
    def scheme(cls):
        return "ram"

    def join(self, basepath, *paths):
        return posixpath.join(basepath, *paths)

    def split(self, path):
        return posixpath.split(path)

    def mkdirs(self, path):
        tf.io.gfile.makedirs(path)

    def has_dirs(self):
        return True

    def _list(self, dir_or_prefix):
        root = dir_or_prefix if tf.io.gfile.isdir(dir_or_prefix) else posixpath.dirname(dir_or_prefix)
        if not tf.io.gfile.isdir(root):
            return
        for directory, _, names in tf.io.gfile.walk(root):
            for name in names:
                path = posixpath.join(directory, name)
                if path.startswith(dir_or_prefix):
                    yield FileMetadata(path, tf.io.gfile.stat(path).length, tf.io.gfile.stat(path).mtime_nsec / 1e9)

    def _open(self, path, mode, compression_type):
        compression_type = FileSystem._get_compression_type(path, compression_type)
        raw = tf.io.gfile.GFile(path, mode)
        return raw if compression_type == CompressionTypes.UNCOMPRESSED else CompressedFile(raw, compression_type)

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        tf.io.gfile.makedirs(posixpath.dirname(path))
        file = self._open(path, "wb", compression_type)
        file.write(b"")  # a GFile creates its file on the first write; Beam's sinks close empty ones
        return file

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        return self._open(path, "rb", compression_type)

    def _each(self, operation, *path_lists):
        errors = {}
        for paths in zip(*path_lists):
            try:
                operation(*paths)
            except Exception as error:  # Beam reports every failed path at once
                errors[paths] = error
        if errors:
            raise BeamIOError(f"{operation.__name__} failed", errors)

    def copy(self, source_file_names, destination_file_names):
        self._each(lambda source, target: tf.io.gfile.copy(source, target, overwrite=True),
                   source_file_names, destination_file_names)

    def rename(self, source_file_names, destination_file_names):
        self._each(lambda source, target: tf.io.gfile.rename(source, target, overwrite=True),
                   source_file_names, destination_file_names)

    def delete(self, paths):
        self._each(lambda path: tf.io.gfile.rmtree(path) if tf.io.gfile.isdir(path) else tf.io.gfile.remove(path),
                   paths)

    def exists(self, path):
        return tf.io.gfile.exists(path)

    def size(self, path):
        return tf.io.gfile.stat(path).length

    def last_updated(self, path):
        return tf.io.gfile.stat(path).mtime_nsec / 1e9

    def checksum(self, path):
        return str(self.size(path))

    def metadata(self, path):
        return FileMetadata(path, self.size(path), self.last_updated(path))
