"""Model versions on disk -> loaded servables, swapped atomically as higher versions appear.

Layout, as TF Serving expects: BASE/<version>/saved_model.pb (+ variables/, assets/,
assets.extra/tf_serving_warmup_requests). Like TF Serving's default version policy, only the
highest version is served.
"""

import contextlib
import logging
import os
import threading
from typing import Callable, Mapping, NamedTuple

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow.python.util import deprecation
from tensorflow_serving.apis import prediction_log_pb2

from serving.batching import BatchingError
from serving.op_libraries import register_op_libraries

log = logging.getLogger("serving")

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit.

# tf.errors codes are the canonical (gRPC) status codes.
_CODE_NAMES = {
    1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
    10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
    15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}


class RequestError(Exception):
    """A request failed; `code` is a canonical status name such as "INVALID_ARGUMENT"."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid_argument(message: str) -> RequestError:
    return RequestError("INVALID_ARGUMENT", message)


def not_found(message: str) -> RequestError:
    return RequestError("NOT_FOUND", message)


def op_error_message(err: tf.errors.OpError) -> str:
    """The failing op's own message, without the eager runtime's wrapping.

    A loaded function reports "Graph execution error: / Detected at node X defined at (most
    recent call last): / <traceback> / <the op's message> / [[node]] [Op:...]"; clients need
    only the op's message (e.g. the text of a tf.debugging.assert_* in the model).
    """
    lines = err.message.splitlines()
    if lines and lines[0].startswith("Graph execution error"):
        body, in_trace = [], False
        for line in lines[1:]:
            if line.startswith("Detected at node"):
                in_trace = True
            elif in_trace and (not line.strip() or line[0].isspace() or line.startswith("<stack")):
                continue
            elif line.strip():
                in_trace = False
                body.append(line)
        lines = body or lines
    first = next((line for line in lines if line.strip() and not line.lstrip().startswith("[[")), "")
    return first.split(" [Op:")[0].strip() or err.message


def find_versions(base_path: str) -> dict[int, str]:
    """Complete versions under base_path: integer dirs holding saved_model.pb -> their paths.

    A version being written has no saved_model.pb yet (tf.saved_model.save writes it last), so
    it is skipped until complete.
    """
    versions = {}
    try:
        names = tf.io.gfile.listdir(base_path)
    except tf.errors.NotFoundError:
        return versions
    for name in names:
        name = name.rstrip("/")
        path = os.path.join(base_path, name)
        if name.isdigit() and tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
            versions[int(name)] = path
    return versions


def read_signature_defs(path: str) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs (inputs, outputs and default input values) of the "serve" meta graph."""
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"{path}/saved_model.pb has no meta graph tagged 'serve'")


def read_warmup_requests(path: str) -> list:
    """The PredictRequests of assets.extra/tf_serving_warmup_requests (none if absent)."""
    file = os.path.join(path, WARMUP_FILE)
    if not tf.io.gfile.exists(file):
        return []
    requests = []
    for record in tf.data.TFRecordDataset(file):
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        kind = entry.WhichOneof("log_type")
        if kind != "predict_log":
            raise ValueError(f"{file}: warmup record of type {kind!r}; only predict_log is supported")
        requests.append(entry.predict_log.request)
        if len(requests) > MAX_WARMUP_RECORDS:
            raise ValueError(f"{file}: more than {MAX_WARMUP_RECORDS} warmup records")
    return requests


def _dtype_of(array: np.ndarray) -> tf.DType:
    return tf.string if array.dtype.kind in "OSU" else tf.dtypes.as_dtype(array.dtype)


def _shape_str(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


class Servable:
    """One loaded version of a model, loaded as tensorflow_model_server's SavedModelBundle is: a
    Session over the MetaGraph tagged "serve", the saver's restore op on variables/, the init op
    (all three done by TensorFlow's session loader), then every request a `Session::Run` on the
    SignatureDef's tensor names. `tf.saved_model.load` would rebind function captures through the
    object graph and so run SavedModels that TF Serving cannot; this loader runs only what TF
    Serving runs. Requests hold the servable (acquire/release) so that unloading waits for those
    in flight."""

    def __init__(self, name: str, version: int, path: str):
        self.name, self.version, self.path = name, version, path
        register_op_libraries(path)
        self._session = tf.compat.v1.Session(graph=tf.Graph())
        try:
            with deprecation.silence():  # it advises tf.saved_model.load, which TF Serving does not use
                meta_graph = tf.compat.v1.saved_model.loader.load(self._session, ["serve"], path)
        except BaseException:
            self._session.close()
            raise
        self.signature_defs = dict(meta_graph.signature_def)
        self._defaults = {
            sig: {alias: tf.make_ndarray(proto) for alias, proto in sig_def.defaults.items()}
            for sig, sig_def in self.signature_defs.items()
        }
        self.warmup_records = 0
        self._in_flight = 0
        self._idle = threading.Condition()

    def warmup(self, batcher=None) -> int:
        """Runs the warmup records once each, through `batcher` if batching is on (as TF Serving runs
        them through its BatchingSession); TF Serving fails the load if one fails, as here."""
        requests = read_warmup_requests(self.path)
        for request in requests:
            inputs = {alias: tf.make_ndarray(proto) for alias, proto in request.inputs.items()}
            signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            full = self.prepare(signature_name, inputs)
            if batcher is None:
                self.call(signature_name, full)
            else:
                batcher.run((id(self), signature_name), full, lambda tensors: self.call(signature_name, tensors))
        self.warmup_records = len(requests)
        return self.warmup_records

    def signature(self, signature_name: str) -> meta_graph_pb2.SignatureDef:
        sig_def = self.signature_defs.get(signature_name)
        if sig_def is None:
            available = ", ".join(sorted(self.signature_defs))
            raise invalid_argument(
                f'Serving signature name: "{signature_name}" not found in signature def '
                f"(available: {available})")
        return sig_def

    def prepare(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All the signature's inputs: the request's, checked against the SignatureDef, plus
        SignatureDef.defaults for those it omits (as TF Serving's GetInputValues does)."""
        sig_def = self.signature(signature_name)
        expected = sorted(sig_def.inputs)
        defaults = self._defaults[signature_name]
        for alias in inputs:
            if alias not in sig_def.inputs:
                raise invalid_argument(
                    f"Unknown input '{alias}' for signature '{signature_name}'; "
                    f"expected inputs: {{{', '.join(expected)}}}")
        full = {}
        for alias, info in sig_def.inputs.items():
            if alias in inputs:
                value = inputs[alias]
            elif alias in defaults:
                value = defaults[alias]
            else:
                raise invalid_argument(
                    f"Missing input '{alias}' for signature '{signature_name}' and it has no default "
                    f"value; inputs with defaults: {{{', '.join(sorted(defaults))}}}")
            value = np.asarray(value)
            want, got = tf.dtypes.as_dtype(info.dtype), _dtype_of(value)
            if want != got:
                raise invalid_argument(
                    f"Input '{alias}' of signature '{signature_name}' expects dtype {want.name} "
                    f"but got {got.name}")
            shape = info.tensor_shape
            if not shape.unknown_rank:
                dims = [d.size for d in shape.dim]
                if len(dims) != value.ndim or any(d >= 0 and d != n for d, n in zip(dims, value.shape)):
                    raise invalid_argument(
                        f"Input '{alias}' of signature '{signature_name}' expects shape "
                        f"{_shape_str(dims)} (-1: any) but got {_shape_str(value.shape)}")
            full[alias] = value
        return full

    def call(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the signature on complete, checked inputs (see prepare)."""
        sig_def = self.signature(signature_name)
        feeds = {sig_def.inputs[a].name: np.asarray(v, dtype=tf.dtypes.as_dtype(sig_def.inputs[a].dtype).as_numpy_dtype)
                 for a, v in inputs.items()}
        try:
            return self._session.run({alias: info.name for alias, info in sig_def.outputs.items()}, feeds)
        except tf.errors.OpError as e:
            raise RequestError(_CODE_NAMES.get(e.error_code, "UNKNOWN"), op_error_message(e)) from e
        except (TypeError, ValueError) as e:  # Feeds the graph cannot take.
            raise invalid_argument(str(e).splitlines()[0]) from e

    def acquire(self) -> None:
        with self._idle:
            self._in_flight += 1

    def release(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def unload(self) -> None:
        """Waits for requests in flight, then drops the loaded model."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0)
        self._session.close()


class VersionStatus(NamedTuple):
    version: int
    state: str  # TF Serving's ModelVersionStatus.State name: LOADING, AVAILABLE, UNLOADING, END.
    error_code: str = "OK"
    error_message: str = ""


class ModelManager:
    """One model name: serves the highest complete version under its base path."""

    def __init__(self, name: str, base_path: str, batcher=None):
        self.name, self.base_path, self.batcher = name, base_path, batcher
        self._lock = threading.Lock()
        self._current: Servable | None = None
        self._states: dict[int, VersionStatus] = {}
        self._failed: dict[int, float] = {}  # version -> mtime of its saved_model.pb at failure
        self._warned_empty = False

    @property
    def current(self) -> Servable | None:
        return self._current

    def refresh(self) -> None:
        """Loads and warms the highest version if it is not the one served, swaps it in, then
        unloads the old one once its requests finish."""
        versions = find_versions(self.base_path)
        if not versions:
            if not self._warned_empty:
                log.warning("No versions of model %s found under %s (expected %s/<number>/saved_model.pb)",
                            self.name, self.base_path, self.base_path)
                self._warned_empty = True
            return
        self._warned_empty = False
        target = max(versions)
        current = self._current
        if current is not None and current.version == target:
            return
        mtime = tf.io.gfile.stat(os.path.join(versions[target], "saved_model.pb")).mtime_nsec
        if self._failed.get(target) == mtime:
            return  # Retried only once the version is rewritten.
        self._states[target] = VersionStatus(target, "LOADING")
        servable = None
        try:
            servable = Servable(self.name, target, versions[target])
            records = servable.warmup(self.batcher)
        except Exception as e:  # Any failure leaves the current version serving.
            if servable is not None:
                servable.unload()
            message = f"{type(e).__name__}: {e}".splitlines()[0]
            log.error("Failed to load model %s version %d from %s: %s", self.name, target, versions[target], message)
            self._states[target] = VersionStatus(target, "END", "UNKNOWN", message)
            self._failed[target] = mtime
            return
        with self._lock:
            old, self._current = self._current, servable
            self._states[target] = VersionStatus(target, "AVAILABLE")
        log.info("Loaded model %s version %d (%d warmup records) from %s", self.name, target, records, servable.path)
        if old is not None:
            self._states[old.version] = VersionStatus(old.version, "UNLOADING")
            old.unload()
            self._states[old.version] = VersionStatus(old.version, "END")
            log.info("Unloaded model %s version %d", self.name, old.version)

    @contextlib.contextmanager
    def acquire(self, version: int | None = None):
        """The served version (which must be `version` if given), held for the block."""
        with self._lock:
            servable = self._current
            if servable is None or (version is not None and servable.version != version):
                request = f"Latest({self.name})" if version is None else f"Specific({self.name}, {version})"
                raise not_found(f"Servable not found for request: {request}")
            servable.acquire()
        try:
            yield servable
        finally:
            servable.release()

    def status(self, version: int | None = None) -> list[VersionStatus]:
        states = dict(self._states)
        if version is None:
            if not states:
                raise not_found(f"Could not find any versions of model {self.name}")
            return [states[v] for v in sorted(states, reverse=True)]
        if version not in states:
            raise not_found(f"Could not find version {version} of model {self.name}")
        return [states[version]]

    def unload(self) -> None:
        with self._lock:
            old, self._current = self._current, None
        if old is not None:
            old.unload()
            self._states[old.version] = VersionStatus(old.version, "END")
            log.info("Unloaded model %s version %d", self.name, old.version)


class ModelRegistry:
    """The served models by name, a poller that picks up new versions, and the predict path
    shared by the REST and gRPC front ends."""

    def __init__(self, models: Mapping[str, str], poll_wait_seconds: float = 1.0, batcher=None):
        self.managers = {name: ModelManager(name, path, batcher) for name, path in models.items()}
        self.poll_wait_seconds = poll_wait_seconds
        self.batcher = batcher
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def refresh(self) -> None:
        for manager in self.managers.values():
            manager.refresh()

    def start_polling(self) -> None:
        if self.poll_wait_seconds > 0:
            self._poller = threading.Thread(target=self._poll, name="serving-poller", daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_wait_seconds):
            try:
                self.refresh()
            except Exception:  # The poller must survive e.g. a base path briefly unreadable.
                log.exception("Polling for model versions failed")

    def ready(self) -> bool:
        return all(m.current is not None for m in self.managers.values())

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        for manager in self.managers.values():
            manager.unload()

    def manager(self, name: str) -> ModelManager:
        if name not in self.managers:
            raise not_found(f"Servable not found for request: Latest({name})")
        return self.managers[name]

    def acquire(self, name: str, version: int | None = None):
        return self.manager(name).acquire(version)

    def predict(self, name: str, version: int | None, signature_name: str,
                inputs: Mapping[str, np.ndarray], output_filter=()) -> tuple[int, str, dict]:
        """Runs a Predict request -> (version served, signature name, outputs)."""
        signature_name = signature_name or DEFAULT_SIGNATURE
        with self.acquire(name, version) as servable:
            full = servable.prepare(signature_name, inputs)
            call: Callable = lambda tensors: servable.call(signature_name, tensors)  # noqa: E731
            if self.batcher is not None:
                try:
                    outputs = self.batcher.run((id(servable), signature_name), full, call)
                except BatchingError as e:
                    raise invalid_argument(str(e)) from e
            else:
                outputs = call(full)
            version = servable.version
        if output_filter:
            unknown = [a for a in output_filter if a not in outputs]
            if unknown:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {unknown[0]} Outputs expected to "
                    f"be in the set {{{','.join(sorted(outputs))}}}.")
            outputs = {a: outputs[a] for a in output_filter}
        return version, signature_name, outputs
