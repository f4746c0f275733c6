"""A local stand-in for tensorflow_model_server: same flags, same REST and gRPC APIs.

    python -m serving.server --model_name=gemma3 --model_base_path=/models/gemma3

In Python (tests, notebooks): `with serve(model_base_path=..., port=0, rest_api_port=0) as s:`.
"""

import argparse
import inspect
import ipaddress
import logging
import os
import re
import signal
import socket
import threading
import time

log = logging.getLogger("serving")

LOOPBACK = "127.0.0.1"
# The front ends' limits, flags of the same names (defaults: ModelServer's).
LIMIT_FLAGS = {
    "rest_api_max_body_bytes": "larger REST request bodies answer 413",
    "rest_api_read_timeout_in_ms": "a REST request slower to arrive answers 408; idle connections close after it",
    "rest_api_max_connections": "REST connections beyond it answer 503 with Retry-After",
    "grpc_max_message_bytes": "larger gRPC requests get RESOURCE_EXHAUSTED",
    "grpc_max_concurrent_rpcs": "gRPC calls beyond it get RESOURCE_EXHAUSTED",
}


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is this machine's own (a name is resolved)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)


class ModelServer:
    """A running server: `grpc_port`, `rest_port` (None when disabled), `registry`, `batcher`.

    It listens on `host`, loopback unless asked otherwise: it has no authentication (neither has TF
    Serving, which listens on every interface and is meant to sit behind the network's own access control).
    The `rest_api_*` and `grpc_*` limits are the front ends' (see RestServer and GrpcServer); what a
    request may hold is the export's own (`gemma3_tf.export.ServingLimits`, checked in its graph).
    """

    def __init__(self, models: dict[str, str], port: int | None = 8500, rest_api_port: int | None = 8501,
                 file_system_poll_wait_seconds: float = 1, enable_batching: bool = False,
                 max_batch_size: int = 8, batch_timeout_micros: int = 2000, allowed_batch_sizes=(),
                 rest_api_timeout_in_ms: int = 30000, host: str = LOOPBACK,
                 rest_api_max_body_bytes: int = 64 << 20, rest_api_read_timeout_in_ms: int = 30000,
                 rest_api_max_connections: int = 256, grpc_max_message_bytes: int = 64 << 20,
                 grpc_max_concurrent_rpcs: int = 256):
        from serving.batching import Batcher
        from serving.grpc_service import GrpcServer
        from serving.models import ModelRegistry
        from serving.rest import RestServer

        self.batcher = (Batcher(max_batch_size, batch_timeout_micros, allowed_batch_sizes) if enable_batching
                        else None)
        self.registry = ModelRegistry(models, file_system_poll_wait_seconds, self.batcher)
        self._grpc = self._rest = None
        if not is_loopback(host):
            log.warning("Listening on %s: this server has no authentication, so anyone who can reach these ports "
                        "can run the model. Put it behind access control, as TF Serving is.", host)
        try:
            # Like TF Serving: the initial versions load (and warm up) before the ports open.
            self.registry.refresh()
            self.registry.start_polling()
            if port is not None:
                self._grpc = GrpcServer(self.registry, port, host, max_message_bytes=grpc_max_message_bytes,
                                        max_concurrent_rpcs=grpc_max_concurrent_rpcs)
                log.info("gRPC API listening on %s:%d", host, self._grpc.port)
            if rest_api_port is not None:
                self._rest = RestServer(self.registry, rest_api_port, host, rest_api_timeout_in_ms,
                                        rest_api_max_body_bytes, rest_api_read_timeout_in_ms, rest_api_max_connections)
                log.info("REST API listening on %s:%d", host, self._rest.port)
        except BaseException:
            self.stop()
            raise

    @property
    def grpc_port(self) -> int | None:
        return self._grpc.port if self._grpc else None

    @property
    def rest_port(self) -> int | None:
        return self._rest.port if self._rest else None

    def wait_until_ready(self, timeout: float = 60.0) -> "ModelServer":
        """Blocks until every model has a version available (one may appear only later)."""
        deadline = time.monotonic() + timeout
        while not self.registry.ready():
            if time.monotonic() > deadline:
                missing = [n for n, m in self.registry.managers.items() if m.current is None]
                raise TimeoutError(f"No version of {', '.join(missing)} became available in {timeout} s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Stops serving and polling, then unloads the models; no thread is left running."""
        if self._rest:
            self._rest.stop()
            self._rest = None
        if self._grpc:
            self._grpc.stop()
            self._grpc = None
        self.registry.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def serve(model_base_path: str | None = None, model_name: str = "default", model_config_file: str | None = None,
          **options) -> ModelServer:
    """Starts a server for one model (name + base path) or a ModelServerConfig file's models.

    Options are ModelServer's: port / rest_api_port (0 = a free port, None = disabled),
    file_system_poll_wait_seconds, enable_batching, max_batch_size, batch_timeout_micros,
    allowed_batch_sizes, host and the rest_api_* and grpc_* limits.
    """
    if model_config_file:
        models = read_model_config(model_config_file)
    elif model_base_path:
        models = {model_name: model_base_path}
    else:
        raise ValueError("Either model_base_path or model_config_file is required")
    return ModelServer(models, **options)


def read_model_config(path: str) -> dict[str, str]:
    """name -> base_path from a text-format ModelServerConfig (model_config_list)."""
    import tensorflow as tf
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    with tf.io.gfile.GFile(path) as f:  # gs://... as TF Serving reads it
        text_format.Parse(f.read(), config)
    if not config.HasField("model_config_list"):
        raise ValueError(f"{path}: expected a model_config_list")
    models = {}
    for model in config.model_config_list.config:
        if not model.name or not model.base_path:
            raise ValueError(f"{path}: each config needs a name and a base_path, got {model}")
        if model.model_platform not in ("", "tensorflow"):
            raise ValueError(f"{path}: model {model.name}: model_platform must be 'tensorflow', "
                             f"got {model.model_platform!r}")
        if model.HasField("model_version_policy") or model.version_labels:
            log.warning("Model %s: model_version_policy/version_labels are ignored; the highest version "
                        "is served", model.name)
        models[model.name] = model.base_path
    return models


def read_batching_parameters(path: str) -> dict:
    """max_batch_size / batch_timeout_micros / allowed_batch_sizes from a text-format BatchingParameters
    file, which is how tensorflow_model_server takes them (its proto is not in tensorflow-serving-api)."""
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    fields = dict(re.findall(r"(\w+)\s*:?\s*\{\s*value\s*:\s*(\d+)\s*\}", text))
    ignored = sorted(set(fields) - {"max_batch_size", "batch_timeout_micros"})
    if ignored:
        log.info("Batching parameters ignored by this server: %s", ", ".join(ignored))
    parameters = {k: int(v) for k, v in fields.items() if k in ("max_batch_size", "batch_timeout_micros")}
    allowed = [int(size) for size in re.findall(r"allowed_batch_sizes\s*:\s*(\d+)", text)]
    if allowed:
        parameters["allowed_batch_sizes"] = allowed
    return parameters


def parse_args(argv=None) -> argparse.Namespace:
    def flag_bool(text: str) -> bool:  # --enable_batching, --enable_batching=true|false
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")

    def positive(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
        return int(text)

    p = argparse.ArgumentParser(prog="python -m serving.server", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8500, help="gRPC port (0: a free port)")
    p.add_argument("--rest_api_port", type=int, default=8501, help="REST port (0: REST disabled)")
    p.add_argument("--model_name", default="default")
    p.add_argument("--model_base_path", default="", help="directory holding the numbered versions")
    p.add_argument("--model_config_file", default="", help="text-format ModelServerConfig, for several models")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1,
                   help="seconds between checks for new versions (0: check only at start)")
    p.add_argument("--enable_batching", type=flag_bool, nargs="?", const=True, default=False)
    p.add_argument("--batching_parameters_file", default="",
                   help="text-format BatchingParameters (tensorflow_model_server's way to set the next two)")
    p.add_argument("--max_batch_size", type=int, default=8, help="rows per merged call, at most")
    p.add_argument("--batch_timeout_micros", type=int, default=2000,
                   help="longest wait for more requests to merge")
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=30000,
                   help="REST predictions longer than this answer 504 (0: no limit)")
    defaults = {name: parameter.default for name, parameter in inspect.signature(ModelServer).parameters.items()}
    p.add_argument("--host", default=defaults["host"],
                   help="address both APIs listen on; 0.0.0.0 opens them to the network (no authentication)")
    for name, help_text in LIMIT_FLAGS.items():
        p.add_argument(f"--{name}", type=positive, default=defaults[name], help=f"{help_text} (default: %(default)s)")
    args = p.parse_args(argv)
    args.allowed_batch_sizes = []
    if not args.model_base_path and not args.model_config_file:
        p.error("one of --model_base_path or --model_config_file is required")
    if args.model_base_path and args.model_config_file:
        p.error("--model_base_path and --model_config_file are exclusive")
    if args.batching_parameters_file:
        import tensorflow as tf

        try:
            vars(args).update(read_batching_parameters(args.batching_parameters_file))
        except (OSError, tf.errors.OpError) as error:
            p.error(f"--batching_parameters_file: {error}")
    return args


def main(argv=None) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ chatter drowns the server's log.
    # Its own handler: TensorFlow may have configured the root logger already.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    args = parse_args(argv)
    server = serve(
        model_base_path=args.model_base_path or None, model_name=args.model_name,
        model_config_file=args.model_config_file or None, port=args.port,
        rest_api_port=args.rest_api_port or None,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        enable_batching=args.enable_batching, max_batch_size=args.max_batch_size,
        batch_timeout_micros=args.batch_timeout_micros, allowed_batch_sizes=args.allowed_batch_sizes,
        rest_api_timeout_in_ms=args.rest_api_timeout_in_ms, host=args.host,
        **{name: getattr(args, name) for name in LIMIT_FLAGS})
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    log.info("Shutting down")
    server.stop()


if __name__ == "__main__":
    main()
