"""TF Serving's REST API: its JSON <-> tensors, and the HTTP front end.

JSON rules follow TF Serving's json_tensor.cc: "instances" (row format) or "inputs" (columnar);
{"b64": ...} for DT_STRING values; DT_STRING outputs whose alias ends in "_bytes" go back as
{"b64": ...}, the others as text; floats as numbers, NaN/Infinity included.
"""

import base64
import concurrent.futures
import http.server
import json
import logging
import re
import socket
import threading
import time
import urllib.parse

import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

from serving.models import DEFAULT_SIGNATURE, ModelRegistry, RequestError, invalid_argument

log = logging.getLogger("serving")

# TF Serving's status -> HTTP mapping (http_server.cc).
HTTP_STATUS = {
    "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
    "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}

MAX_TENSOR_RANK = 32  # as Eigen's, and far below Python's recursion limit (the row walk recurses per level)
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)", re.I)
_MODEL_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(?:/(metadata))?", re.I)

_INT_RANGES = {
    types_pb2.DT_INT8: (-2**7, 2**7 - 1), types_pb2.DT_UINT8: (0, 2**8 - 1),
    types_pb2.DT_INT16: (-2**15, 2**15 - 1), types_pb2.DT_UINT16: (0, 2**16 - 1),
    types_pb2.DT_INT32: (-2**31, 2**31 - 1), types_pb2.DT_UINT32: (0, 2**32 - 1),
    types_pb2.DT_INT64: (-2**63, 2**63 - 1), types_pb2.DT_UINT64: (0, 2**64 - 1),
}
_FLOAT_INT_LIMIT = {types_pb2.DT_FLOAT: 2**24, types_pb2.DT_HALF: 2**11, types_pb2.DT_DOUBLE: 2**53}
_NUMPY_DTYPE = {
    types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_HALF: np.float16,
    types_pb2.DT_INT8: np.int8, types_pb2.DT_UINT8: np.uint8, types_pb2.DT_INT16: np.int16,
    types_pb2.DT_UINT16: np.uint16, types_pb2.DT_INT32: np.int32, types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_INT64: np.int64, types_pb2.DT_UINT64: np.uint64, types_pb2.DT_BOOL: np.bool_,
    types_pb2.DT_STRING: object,
}


def _dtype_name(dtype: int) -> str:
    return types_pb2.DataType.Name(dtype)[3:].lower()


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _leaf(value, dtype: int, name: str):
    """One JSON value as an element of dtype, by TF Serving's rules (no silent coercion)."""
    def type_error():
        return invalid_argument(
            f"Input '{name}': JSON Value: {json.dumps(value)} Type: {_json_type(value)} is not of "
            f"expected type: {_dtype_name(dtype)}")

    if dtype == types_pb2.DT_STRING:
        if isinstance(value, str):
            return value.encode("utf-8")
        if _is_b64(value):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError:
                raise invalid_argument(f"Input '{name}': Unable to base64 decode {value['b64'][:40]!r}")
        if isinstance(value, dict):
            raise invalid_argument(
                f"Input '{name}': JSON Value: {json.dumps(value)} not formatted correctly for base64 data")
        raise type_error()
    if dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise type_error()
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise type_error()
    if dtype in _INT_RANGES:
        if not isinstance(value, int):
            raise type_error()
        low, high = _INT_RANGES[dtype]
        if not low <= value <= high:
            raise invalid_argument(f"Input '{name}': {value} is out of range for {_dtype_name(dtype)}")
        return value
    if dtype in _FLOAT_INT_LIMIT:
        too_big = abs(value) > float(np.finfo(_NUMPY_DTYPE[dtype]).max) and np.isfinite(value)
        if too_big or (isinstance(value, int) and abs(value) > _FLOAT_INT_LIMIT[dtype]):
            raise invalid_argument(
                f"Input '{name}': Cannot convert JSON value: {value} to {_dtype_name(dtype)} without "
                "loss of precision.")
        return value
    raise RequestError("UNIMPLEMENTED", f"Input '{name}': conversion of JSON to {_dtype_name(dtype)}")


def json_to_array(value, dtype: int, name: str) -> np.ndarray:
    """A (nested-list) JSON value as a dense array of the SignatureDef dtype."""
    shape, probe = [], value
    while isinstance(probe, list):
        if len(shape) == MAX_TENSOR_RANK:
            raise invalid_argument(f"Input '{name}': lists nested deeper than {MAX_TENSOR_RANK} levels")
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    flat = []

    def visit(v, level):
        if not isinstance(v, list):
            if level != len(shape):
                raise invalid_argument(
                    f"Input '{name}': JSON Value: {json.dumps(v)} found at incorrect level: {level + 1} "
                    f"in the JSON DOM. Expected at level: {len(shape)}")
            flat.append(_leaf(v, dtype, name))
            return
        if level >= len(shape):
            raise invalid_argument(
                f"Input '{name}': Encountered list at unexpected level: {level} expected < {len(shape)}")
        if len(v) != shape[level]:
            raise invalid_argument(
                f"Input '{name}': Encountered list at unexpected size: {len(v)} at level: {level} "
                f"expected size: {shape[level]}")
        for item in v:
            visit(item, level + 1)

    visit(value, 0)
    np_dtype = _NUMPY_DTYPE[dtype]
    if np_dtype is object:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
    else:
        array = np.array(flat, dtype=np_dtype)
    return array.reshape(shape)


def parse_predict_body(body: bytes) -> dict:
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid_argument(f"JSON Parse error: {e}")
    except RecursionError:
        raise invalid_argument("JSON Parse error: the document is nested too deeply")
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {json.dumps(doc)[:200]} Is not object")
    signature_name = doc.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise invalid_argument("'signature_name' key must be a string value.")
    has_rows, has_columns = "instances" in doc, "inputs" in doc
    if has_rows and has_columns:
        raise invalid_argument("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if not (has_rows or has_columns):
        raise invalid_argument("Missing 'inputs' or 'instances' key")
    if has_rows and not isinstance(doc["instances"], list):
        raise invalid_argument("Expecting 'instances' to be an list/array")
    if has_rows and not doc["instances"]:
        raise invalid_argument("No values in 'instances' array")
    return doc


def _unknown_input_error(name, input_infos) -> RequestError:
    return invalid_argument(
        f"Unknown input '{name}'; expected inputs: {{{', '.join(sorted(input_infos))}}}")


def request_tensors(doc: dict, input_infos) -> tuple[str, dict[str, np.ndarray]]:
    """("row" | "columnar", inputs) from a parsed predict body.

    Unlike TF Serving before 2.15, inputs may be left out: SignatureDef defaults fill them
    later (and a missing one without a default fails there, naming it).
    """
    if "inputs" in doc:
        value = doc["inputs"]
        if not isinstance(value, dict) or _is_b64(value):
            if len(input_infos) > 1:
                raise invalid_argument(
                    "inputs is a plain value/list, but expecting an object as multiple input tensors "
                    f"required as per tensorinfo_map: {{{', '.join(sorted(input_infos))}}}")
            value = {next(iter(input_infos)): value}
        tensors = {}
        for name, item in value.items():
            if name not in input_infos:
                raise _unknown_input_error(name, input_infos)
            tensors[name] = json_to_array(item, input_infos[name].dtype, name)
        return "columnar", tensors

    instances = doc["instances"]
    as_objects = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not as_objects and len(input_infos) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            f"required as per tensorinfo_map: {{{', '.join(sorted(input_infos))}}}")
    keys = None
    columns: dict[str, list] = {}
    for i, item in enumerate(instances):
        if as_objects != (isinstance(item, dict) and not _is_b64(item)):
            kind = "object" if as_objects else "value/list"
            raise invalid_argument(f"Expecting {kind} at item {i} of 'instances' list")
        row = item if as_objects else {next(iter(input_infos)): item}
        if keys is None:
            keys = set(row)
        elif set(row) != keys:
            raise invalid_argument(
                f"Failed to process element: {i} of 'instances' list. Its keys "
                f"{{{', '.join(sorted(row))}}} differ from element 0's {{{', '.join(sorted(keys))}}}")
        for name, value in row.items():
            if name not in input_infos:
                raise _unknown_input_error(name, input_infos)
            array = json_to_array(value, input_infos[name].dtype, name)
            if columns.get(name) and columns[name][0].shape != array.shape:
                raise invalid_argument(
                    f"Input '{name}': element {i} of 'instances' has shape {list(array.shape)} but "
                    f"element 0 has {list(columns[name][0].shape)}")
            columns.setdefault(name, []).append(array)
    return "row", {name: np.stack(arrays) for name, arrays in columns.items()}


def array_to_json(array: np.ndarray, alias: str):
    """A tensor as nested JSON lists."""
    array = np.asarray(array)
    if array.dtype.kind in "OSU":
        if alias.endswith("_bytes"):
            convert = lambda v: {"b64": base64.b64encode(v).decode("ascii")}  # noqa: E731
        else:
            convert = lambda v: v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)  # noqa: E731
        flat = [convert(v) for v in array.ravel()]
    elif array.dtype.kind == "f":
        # The shortest text that round-trips in the tensor's own precision, as TF Serving writes
        # it (0.2 rather than float32's 0.20000000298...).
        flat = [float(v) for v in array.ravel().astype(str)]
    else:
        flat = array.ravel().tolist()
    return _nest(flat, array.shape)


def _nest(flat: list, shape: tuple):
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def response_json(outputs: dict[str, np.ndarray], fmt: str) -> dict:
    names = sorted(outputs)
    if fmt == "columnar":
        if len(names) == 1:
            return {"outputs": array_to_json(outputs[names[0]], names[0])}
        return {"outputs": {n: array_to_json(outputs[n], n) for n in names}}
    batch = None
    for name in names:
        value = outputs[name]
        if value.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch is not None and value.shape[0] != batch:
            raise invalid_argument(
                f"Tensor name: {name} has inconsistent batch size: {value.shape[0]} expecting: {batch}")
        batch = value.shape[0]
    columns = {n: array_to_json(outputs[n], n) for n in names}
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    return {"predictions": [{n: columns[n][i] for n in names} for i in range(batch)]}


class RestApi:
    """Routes /v1/models/... requests to the registry; returns (HTTP status, JSON body)."""

    def __init__(self, registry: ModelRegistry, timeout_ms: int = 30000, max_workers: int = 32):
        self.registry = registry
        self.timeout = timeout_ms / 1000 if timeout_ms > 0 else None
        # Predictions run here so that a request past its deadline can be answered (504)
        # while the model finishes it; TF Serving likewise bounds runs by this timeout.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="rest-predict")

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        try:
            return 200, self._route(method, urllib.parse.urlsplit(path).path, body)
        except RequestError as e:
            return HTTP_STATUS.get(e.code, 500), {"error": e.message}
        except RecursionError:  # a value nested too deeply for the checks' own recursion
            return 400, {"error": "The request's JSON is nested too deeply"}
        except Exception as e:  # A bug here must not take the server down.
            log.exception("REST %s %s failed", method, path)
            return 500, {"error": f"{type(e).__name__}: {e}"}

    def _route(self, method: str, path: str, body: bytes) -> dict:
        if method == "POST":
            match = _PREDICT_PATH.fullmatch(path)
            if match:
                name, version, label, verb = match.groups()
                name = urllib.parse.unquote(name)
                if verb.lower() != "predict":
                    raise RequestError("UNIMPLEMENTED", f"The {verb} API is not supported by this server; use predict")
                return self._predict(name, self._version(version, label), body)
        elif method == "GET":
            match = _MODEL_PATH.fullmatch(path)
            if match:
                name, version, label, metadata = match.groups()
                if not name:
                    raise invalid_argument("Missing model name in request.")
                name = urllib.parse.unquote(name)
                version = self._version(version, label)
                return self._metadata(name, version) if metadata else self._status(name, version)
        raise invalid_argument(f"Malformed request: {method} {path}")

    @staticmethod
    def _version(version: str | None, label: str | None) -> int | None:
        if label is not None:
            raise invalid_argument(
                f"Unrecognized servable version label: {urllib.parse.unquote(label)} "
                "(this server does not support version labels; use /versions/N)")
        return int(version) if version is not None else None

    def _predict(self, name: str, version: int | None, body: bytes) -> dict:
        doc = parse_predict_body(body)
        signature_name = doc.get("signature_name") or DEFAULT_SIGNATURE
        with self.registry.acquire(name, version) as servable:
            input_infos = servable.signature(signature_name).inputs
        fmt, inputs = request_tensors(doc, input_infos)
        future = self._executor.submit(self.registry.predict, name, version, signature_name, inputs)
        try:
            _, _, outputs = future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            raise RequestError("DEADLINE_EXCEEDED", f"Deadline exceeded: prediction took more than "
                               f"rest_api_timeout_in_ms={int(self.timeout * 1000)}")
        return response_json(outputs, fmt)

    def _status(self, name: str, version: int | None) -> dict:
        states = self.registry.manager(name).status(version)
        return {"model_version_status": [
            {"version": str(s.version), "state": s.state,
             "status": {"error_code": s.error_code, "error_message": s.error_message}}
            for s in states]}

    def _metadata(self, name: str, version: int | None) -> dict:
        with self.registry.acquire(name, version) as servable:
            spec = model_pb2.ModelSpec(name=name)
            spec.version.value = servable.version
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, sig_def in servable.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(sig_def)
        def as_json(message):
            return json_format.MessageToDict(
                message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        return {"model_spec": as_json(spec), "metadata": {"signature_def": as_json(signature_map)}}


class _Handler(http.server.BaseHTTPRequestHandler):
    """One connection. Every answer is JSON, the ones http.server writes itself (431, 414, 400 for a bad
    request line) included. Answers given before the body was read close the connection after draining
    what the client still sends: closing a socket with unread bytes resets it, and the client would see
    ConnectionResetError in place of the answer."""

    protocol_version = "HTTP/1.1"  # Keep-alive, as clients with sessions expect.
    # Headers and body go out in two writes: with Nagle's algorithm the second waits for the client's
    # delayed ACK (~40 ms a request, measured as REST overhead against gRPC).
    disable_nagle_algorithm = True
    server: "_HttpServer"

    def setup(self):
        self.timeout = self.server.read_timeout  # each recv; _read_body also bounds the whole body
        self._drain = False
        super().setup()

    def do_GET(self):
        self._reply(*self.server.api.handle("GET", self.path, b""))

    def do_POST(self):
        body = self._read_body()
        if body is not None:
            self._reply(*self.server.api.handle("POST", self.path, body))

    def _refuse(self, status: int, message: str, **headers) -> None:
        self._drain = self.close_connection = True
        self._reply(status, {"error": message}, Connection="close", **headers)

    def _read_body(self) -> bytes | None:
        """The request body, or None once it was refused (malformed or missing length, too big, too slow)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._refuse(411, "Length Required: send the body with a Content-Length (chunked bodies are not "
                              "supported)")
            return None
        text = self.headers.get("Content-Length")
        if text is None:
            self._refuse(411, "Length Required: a POST needs a Content-Length header")
            return None
        if not text.strip().isdigit():
            self._refuse(400, f"Content-Length must be a number of bytes, got {text[:40]!r}")
            return None
        length, limit = int(text), self.server.max_body_bytes
        if length > limit:
            self._refuse(413, f"Request body of {length} bytes is over rest_api_max_body_bytes={limit}")
            return None
        chunks, received, deadline = [], 0, time.monotonic() + self.server.read_timeout
        while received < length:
            try:
                chunk = self.rfile.read1(min(length - received, 1 << 20))
            except TimeoutError:
                chunk = None
            if not chunk or time.monotonic() > deadline:
                if chunk == b"":  # the client closed its side: nobody to answer
                    self.close_connection = True
                else:
                    self._refuse(408, f"Request Timeout: {received} of {length} body bytes arrived within "
                                      f"rest_api_read_timeout_in_ms={int(self.server.read_timeout * 1000)}")
                return None
            chunks.append(chunk)
            received += len(chunk)
        return b"".join(chunks)

    def _not_allowed(self):
        self._refuse(405, f"Method Not Allowed: {self.command}; this API takes GET and POST", Allow="GET, POST")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = do_HEAD = _not_allowed

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a bad request line, headers too long or too many) as JSON."""
        self._refuse(code, message or http.HTTPStatus(code).phrase)

    def _reply(self, status: int, doc: dict, **headers) -> None:
        body = json.dumps(doc).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 503:
            headers.setdefault("Retry-After", "1")
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def finish(self):
        super().finish()
        if self._drain:
            _drain(self.connection, self.server.read_timeout)

    def log_message(self, format, *args):  # One line per request is too chatty at INFO.
        log.debug("REST %s - %s", self.address_string(), format % args)


def _drain(connection: socket.socket, timeout: float, limit: int = 256 << 20) -> None:
    """Half-closes `connection` and reads what the client still sends (up to `limit` bytes or `timeout`):
    the client reads the answer before the connection closes, rather than a reset."""
    try:
        connection.shutdown(socket.SHUT_WR)
        connection.settimeout(min(timeout, 2.0))
        deadline, drained = time.monotonic() + min(timeout, 2.0), 0
        while drained < limit and time.monotonic() < deadline:
            chunk = connection.recv(1 << 16)
            if not chunk:
                break
            drained += len(chunk)
    except OSError:
        pass


class _HttpServer(http.server.ThreadingHTTPServer):
    """A thread per connection, up to `max_connections`; the listen backlog holds bursts beyond the
    accept loop (socketserver's default of 5 reset clients under 30 parallel POSTs, measured)."""

    daemon_threads = False  # Tracked, so that close() can join them.
    block_on_close = True
    request_queue_size = 1024  # the kernel caps it at net.core.somaxconn (4096 on current Linux)

    def __init__(self, address, api: RestApi, max_body_bytes: int, read_timeout: float, max_connections: int):
        self.api, self.max_body_bytes, self.read_timeout = api, max_body_bytes, read_timeout
        self.max_connections = max_connections
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        with self._connections_lock:
            full = len(self._connections) >= self.max_connections
            if not full:
                self._connections.add(request)
        if not full:
            return super().process_request(request, client_address)
        # Beyond capacity: 503 with a retry hint, not a reset (written here: no thread to spare).
        body = json.dumps({"error": f"The server is at capacity (rest_api_max_connections={self.max_connections} "
                                    "connections); retry later"}).encode()
        try:
            request.settimeout(1.0)
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:
            pass
        threading.Thread(target=self._drain_and_close, args=(request,), daemon=True).start()

    def _drain_and_close(self, request):
        _drain(request, 1.0)
        self.shutdown_request(request)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def close_idle_connections(self) -> None:
        """Ends keep-alive connections: their threads wait for a next request that won't come."""
        with self._connections_lock:
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RD)
                except OSError:
                    pass


class RestServer:
    """The REST front end on its own thread; port 0 picks a free port.

    Args:
        timeout_ms: predictions running longer answer 504 (0: no limit).
        max_body_bytes: larger request bodies answer 413, unread.
        read_timeout_ms: a request whose body takes longer to arrive answers 408; idle keep-alive
            connections close after it.
        max_connections: connections beyond it answer 503 with Retry-After.
    """

    def __init__(self, registry: ModelRegistry, port: int, host: str, timeout_ms: int, max_body_bytes: int,
                 read_timeout_ms: int, max_connections: int):
        self.api = RestApi(registry, timeout_ms)
        self._httpd = _HttpServer((host, port), self.api, max_body_bytes, read_timeout_ms / 1000, max_connections)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="rest-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._thread.join()
        self._httpd.close_idle_connections()
        self._httpd.server_close()  # Joins the request threads.
        self.api.close()
