"""Clients for TF Serving (or serving.server): REST and gRPC, with the same methods.

    client = RestClient("http://localhost:8501", model_name="gemma3")   # or GrpcClient("localhost:8500", ...)
    client.generate("Why is the sky blue?", max_new_tokens=64)  # -> {"completion": ..., "num_tokens": ...}

CLI: python -m serving.client --url http://localhost:8501 --model_name gemma3 "prompt"
"""

import argparse
import base64
import json
import os
import sys
import time
from typing import Mapping, Sequence

import numpy as np

from serving import refusals

DEFAULT_SIGNATURE = "serving_default"
_NUMPY_DTYPES = {  # SignatureDef dtype names (DT_*) -> numpy
    "DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_HALF": np.float16, "DT_INT8": np.int8,
    "DT_UINT8": np.uint8, "DT_INT16": np.int16, "DT_UINT16": np.uint16, "DT_INT32": np.int32,
    "DT_UINT32": np.uint32, "DT_INT64": np.int64, "DT_UINT64": np.uint64, "DT_BOOL": np.bool_,
    "DT_STRING": object,
}


class ServingError(Exception):
    """The server refused or failed a request: `status` is the HTTP status (REST) or the
    grpc.StatusCode (gRPC), `message` the server's own words."""

    def __init__(self, status, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message

    @property
    def refusal(self):
        """The model's refusal of the input (`serving.refusals.Refusal`: code, field, row), or None."""
        return refusals.parse(self.message)


def _object_array(flat: list, shape) -> np.ndarray:
    """An object array of exactly `shape` (np.array would nest lists and dicts itself)."""
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)


def _as_array(value, dtype) -> np.ndarray:
    """value (python scalars/lists, bytes, str, numpy) as an array of the SignatureDef dtype;
    numpy arrays keep their dtype so that the server, not the client, judges a mismatch."""
    if isinstance(value, np.ndarray):
        return value
    if dtype is object:
        array = np.asarray(value, dtype=object)
        return _object_array([v.encode("utf-8") if isinstance(v, str) else v for v in array.ravel()], array.shape)
    return np.asarray(value, dtype=dtype)


class _Client:
    """What both transports share: retries, metadata-driven dtypes, the model's signatures."""

    def __init__(self, model_name: str, version: int | None, timeout: float, retries: int, backoff: float):
        self.model_name, self.version = model_name, version
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._signatures: dict | None = None

    def _retrying(self, attempt):
        """attempt() with exponential backoff while it raises a transient error."""
        for i in range(self.retries + 1):
            try:
                return attempt()
            except Exception as e:
                if i == self.retries or not self._transient(e):
                    raise
                time.sleep(self.backoff * 2 ** i)

    def _transient(self, error: Exception) -> bool:
        raise NotImplementedError

    def signatures(self) -> dict:
        """{signature: {"inputs": {alias: numpy dtype}, "outputs": {alias: numpy dtype},
        "defaults": {alias: scalar}}}, cached (defaults: the SignatureDef's scalar defaults)."""
        if self._signatures is None:
            signature_defs = self.metadata()["metadata"]["signature_def"]["signature_def"]
            self._signatures = {
                name: {**{side: {alias: _NUMPY_DTYPES.get(info.get("dtype"), None)
                                 for alias, info in sig.get(side, {}).items()}
                          for side in ("inputs", "outputs")},
                       "defaults": {alias: value for alias, proto in sig.get("defaults", {}).items()
                                    if (value := _scalar(proto)) is not None}}
                for name, sig in signature_defs.items()}
        return self._signatures

    def _signature(self, signature_name: str) -> dict:
        # An unknown signature is left for the server to refuse, in its own words.
        return self.signatures().get(signature_name, {"inputs": {}, "outputs": {}})

    def predict(self, inputs: Mapping, signature_name: str = DEFAULT_SIGNATURE) -> dict:
        raise NotImplementedError

    def metadata(self) -> dict:
        raise NotImplementedError

    def generate(self, prompts, images=None, max_new_tokens=None, temperature=None, top_k=None,
                 top_p=None, seed=None):
        """Completions for a prompt (-> dict) or a list of prompts (-> list of dicts).

        images: for one prompt, a list of encoded JPEG/PNG images (bytes or file paths); for a
        list of prompts, one such list per prompt. Parameters left None take the SignatureDef
        defaults (read from the model's metadata); every input goes with one value per row.
        """
        single = isinstance(prompts, str)
        prompts = [prompts] if single else list(prompts)
        rows = [[]] * len(prompts)
        if images is not None:
            rows = [images] if single else list(images)
            if len(rows) != len(prompts):
                raise ValueError(f"images: expected one list per prompt ({len(prompts)}), got {len(rows)}")
        # Every input, one value per row: tensorflow_model_server's --enable_batching refuses an input
        # without a batch dimension, and an omitted one would get its (scalar) SignatureDef default.
        inputs = {"prompt": prompts, "images": _image_matrix(rows)}
        defaults = self._signature(DEFAULT_SIGNATURE).get("defaults", {})
        params = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k,
                  "top_p": top_p, "seed": seed}
        for name, value in params.items():
            value = defaults.get(name) if value is None else value
            if value is not None:
                inputs[name] = [value] * len(prompts) if np.ndim(value) == 0 else value
        outputs = self.predict(inputs)
        results = [{"completion": _text(c), "num_tokens": int(n)}
                   for c, n in zip(outputs["completion"], outputs["num_tokens"])]
        return results[0] if single else results

    def score(self, prompts, responses):
        """Log-likelihood of each response given its prompt: dict (one pair) or list of dicts."""
        single = isinstance(prompts, str)
        outputs = self.predict({"prompt": [prompts] if single else list(prompts),
                                "response": [responses] if single else list(responses)}, "score")
        results = [{"log_likelihood": float(s), "num_tokens": int(n)}
                   for s, n in zip(outputs["log_likelihood"], outputs["num_tokens"])]
        return results[0] if single else results

    def embed(self, prompts) -> np.ndarray:
        """Embeddings: [D] for one prompt, [B, D] for a list."""
        single = isinstance(prompts, str)
        embedding = self.predict({"prompt": [prompts] if single else list(prompts)}, "embed")["embedding"]
        return embedding[0] if single else embedding


def _image_matrix(rows: Sequence) -> list[list[bytes]]:
    """Per-prompt image lists as a [B, N] matrix, short rows padded with b"" (no image)."""
    def load(image):
        if isinstance(image, (str, os.PathLike)):
            with open(image, "rb") as f:
                return f.read()
        return bytes(image)

    rows = [[load(i) for i in ([row] if isinstance(row, (bytes, str, os.PathLike)) else row or [])]
            for row in rows]
    width = max(len(r) for r in rows)
    return [r + [b""] * (width - len(r)) for r in rows]


def _scalar(tensor_proto: dict):
    """The value of a scalar int/float TensorProto in JSON form (proto or JSON field names), else None."""
    if (tensor_proto.get("tensor_shape") or tensor_proto.get("tensorShape") or {}).get("dim"):
        return None
    for field in ("int_val", "intVal", "float_val", "floatVal"):
        if tensor_proto.get(field):
            return tensor_proto[field][0]
    return None


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _to_json(array: np.ndarray):
    if array.dtype.kind not in "OSU":
        return array.tolist()

    def encode(v):
        if isinstance(v, bytes):
            try:
                return v.decode("utf-8")
            except UnicodeDecodeError:  # Binary (e.g. an image): b64, which any DT_STRING accepts.
                return {"b64": base64.b64encode(v).decode("ascii")}
        return str(v)

    return _object_array([encode(v) for v in array.ravel()], array.shape).tolist()


def _from_json(value, dtype) -> np.ndarray:
    if dtype is not object:
        return np.asarray(value, dtype=dtype)

    def decode(v):
        if isinstance(v, dict) and "b64" in v:
            return base64.b64decode(v["b64"])
        return v.encode("utf-8") if isinstance(v, str) else v

    shape, probe = [], value
    while isinstance(probe, list):
        shape.append(len(probe))
        probe = probe[0] if probe else None
    flat = [value]
    for _ in shape:
        flat = [item for sub in flat for item in sub]
    return _object_array([decode(v) for v in flat], shape)


class RestClient(_Client):
    def __init__(self, url: str = "http://localhost:8501", model_name: str = "default", version: int | None = None,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5):
        import requests

        super().__init__(model_name, version, timeout, retries, backoff)
        self.url = url.rstrip("/")
        self._session = requests.Session()
        self._model_url = f"{self.url}/v1/models/{model_name}" + (f"/versions/{version}" if version is not None else "")

    def _transient(self, error) -> bool:
        import requests

        if isinstance(error, ServingError):
            return error.status in (502, 503, 504)
        # Not read timeouts: the server may still be running the request.
        return isinstance(error, (requests.ConnectionError, requests.ConnectTimeout))

    def _request(self, method: str, url: str, body: dict | None = None) -> dict:
        import requests

        # NaN and Infinity as TF Serving's JSON writes and reads them (requests' own encoding refuses them).
        data = None if body is None else json.dumps(body).encode("utf-8")

        def attempt():
            response = self._session.request(method, url, data=data, timeout=self.timeout,
                                             headers={"Content-Type": "application/json"})
            try:
                doc = response.json()
            except ValueError:
                doc = {"error": response.text}
            if response.status_code != 200:
                raise ServingError(response.status_code, doc.get("error", response.text))
            return doc

        try:
            return self._retrying(attempt)
        except requests.RequestException as e:
            raise ServingError(503 if isinstance(e, requests.ConnectionError) else 504, str(e)) from e

    def predict(self, inputs: Mapping, signature_name: str = DEFAULT_SIGNATURE) -> dict:
        """Columnar ("inputs") request -> {output alias: numpy array}; bytes go as b64."""
        signature = self._signature(signature_name)
        body = {"signature_name": signature_name,
                "inputs": {k: _to_json(_as_array(v, signature["inputs"].get(k, object)))
                           for k, v in inputs.items()}}
        outputs = self._request("POST", f"{self._model_url}:predict", body)["outputs"]
        if not isinstance(outputs, dict) or len(signature["outputs"]) == 1:
            # A single output comes back bare, without its alias.
            outputs = {next(iter(signature["outputs"])): outputs}
        return {k: _from_json(v, signature["outputs"].get(k)) for k, v in outputs.items()}

    def metadata(self) -> dict:
        return self._request("GET", f"{self._model_url}/metadata")

    def status(self) -> dict:
        return self._request("GET", self._model_url)

    def close(self) -> None:
        self._session.close()


class GrpcClient(_Client):
    def __init__(self, target: str = "localhost:8500", model_name: str = "default", version: int | None = None,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        super().__init__(model_name, version, timeout, retries, backoff)
        self.target = target
        self._channel = grpc.insecure_channel(
            target, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def _transient(self, error) -> bool:
        import grpc

        return isinstance(error, grpc.RpcError) and error.code() in (
            grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    def _call(self, rpc, request):
        import grpc

        try:
            return self._retrying(lambda: rpc(request, timeout=self.timeout))
        except grpc.RpcError as e:
            raise ServingError(e.code(), e.details()) from e

    def _model_spec(self, spec, signature_name: str = "") -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version
        if signature_name:
            spec.signature_name = signature_name

    def predict(self, inputs: Mapping, signature_name: str = DEFAULT_SIGNATURE) -> dict:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        signature = self._signature(signature_name)
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, signature_name)
        for alias, value in inputs.items():
            request.inputs[alias].CopyFrom(tf.make_tensor_proto(_as_array(value, signature["inputs"].get(alias, object))))
        response = self._call(self._stub.Predict, request)
        return {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}

    def metadata(self) -> dict:
        """GetModelMetadata as REST's JSON: {"model_spec": ..., "metadata": {"signature_def": ...}}."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec)
        response = self._call(self._stub.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        as_dict = lambda m: json_format.MessageToDict(m, preserving_proto_field_name=True)  # noqa: E731
        return {"model_spec": as_dict(response.model_spec), "metadata": {"signature_def": as_dict(signature_map)}}

    def close(self) -> None:
        self._channel.close()


def connect(url: str, model_name: str, **options) -> _Client:
    """A client for http(s)://host:port (REST) or grpc://host:port (gRPC)."""
    if url.startswith("grpc://"):
        return GrpcClient(url[len("grpc://"):], model_name, **options)
    if url.startswith(("http://", "https://")):
        return RestClient(url, model_name, **options)
    raise ValueError(f"--url must start with http://, https:// or grpc://, got {url!r}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.client", description="Generate with a served model.")
    p.add_argument("prompt", nargs="+", help="one or more prompts; each completion is printed")
    p.add_argument("--url", default="http://localhost:8501", help="http://host:8501 (REST) or grpc://host:8500")
    p.add_argument("--model_name", required=True)
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--max_new_tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top_k", type=int)
    p.add_argument("--top_p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--image", action="append", default=[], help="image file for each prompt (repeatable)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--retries", type=int, default=3, help="retries on connection errors / unavailable")
    args = p.parse_args(argv)
    try:
        client = connect(args.url, args.model_name, version=args.version, timeout=args.timeout,
                         retries=args.retries)
        results = client.generate(
            args.prompt, images=[args.image] * len(args.prompt) if args.image else None,
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
            top_p=args.top_p, seed=args.seed)
    except (ServingError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for result in results:
        print(result["completion"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
