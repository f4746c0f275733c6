"""tensorflow.serving.PredictionService over gRPC: Predict and GetModelMetadata.

Classify, Regress and MultiInference keep the generated servicer's UNIMPLEMENTED answer.
"""

import concurrent.futures
import logging
import math

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving.models import ModelRegistry, RequestError, invalid_argument

log = logging.getLogger("serving")



def _model_version(spec) -> int | None:
    choice = spec.WhichOneof("version_choice")
    if choice == "version_label":
        raise invalid_argument(
            f"Unrecognized servable version label: {spec.version_label} "
            "(this server does not support version labels; use model_spec.version)")
    return spec.version.value if choice == "version" else None


def tensor_from_proto(alias: str, proto, max_bytes: int) -> np.ndarray:
    """A request's TensorProto as an array, refused (before any allocation) when its shape claims more than
    `max_bytes`: a proto may give one value for a whole shape, which tf.make_ndarray then repeats, so a
    17-byte message would otherwise allocate 800 MB (measured, shape [2e8] float32)."""
    dims = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in dims):
        raise invalid_argument(f"tensor parsing error: {alias}: negative dimension in shape {dims}")
    itemsize = 1 if proto.dtype == types_pb2.DT_STRING else max(tf.dtypes.as_dtype(proto.dtype).size, 1)
    if math.prod(dims) * itemsize > max_bytes:
        raise invalid_argument(f"tensor parsing error: {alias}: shape {dims} holds more than the "
                               f"grpc_max_message_bytes={max_bytes} a request may carry")
    try:
        return tf.make_ndarray(proto)
    except Exception as e:
        raise invalid_argument(f"tensor parsing error: {alias}: {e}")


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: ModelRegistry, max_tensor_bytes: int):
        self.registry, self.max_tensor_bytes = registry, max_tensor_bytes

    def Predict(self, request, context):
        return self._answer(context, self._predict, request)

    def GetModelMetadata(self, request, context):
        return self._answer(context, self._metadata, request)

    def _answer(self, context, method, request):
        try:
            return method(request)
        except RequestError as e:
            context.abort(grpc.StatusCode[e.code], e.message)
        except Exception as e:  # A bug here must not take the server down.
            log.exception("gRPC %s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

    def _predict(self, request):
        if not request.model_spec.name:
            raise invalid_argument("Missing model_spec.name in request.")
        inputs = {alias: tensor_from_proto(alias, proto, self.max_tensor_bytes)
                  for alias, proto in request.inputs.items()}
        version, signature_name, outputs = self.registry.predict(
            request.model_spec.name, _model_version(request.model_spec),
            request.model_spec.signature_name, inputs, list(request.output_filter))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = signature_name
        for alias, value in outputs.items():
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(value))
        return response

    def _metadata(self, request):
        spec = request.model_spec
        if not spec.name:
            raise invalid_argument("Missing model_spec.name in request.")
        if not request.metadata_field:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise invalid_argument(f"Metadata field {field} is not supported")
        with self.registry.acquire(spec.name, _model_version(spec)) as servable:
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, sig_def in servable.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(sig_def)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(signature_map)
        return response


class GrpcServer:
    """The gRPC front end; port 0 picks a free port.

    Args:
        max_message_bytes: larger requests are refused by gRPC itself (RESOURCE_EXHAUSTED) before they are
            parsed. Images and long prompts exceed gRPC's 4 MB default; TF Serving sets no limit (2 GB).
        max_concurrent_rpcs: RPCs beyond it (running or queued for a worker) get RESOURCE_EXHAUSTED.
    """

    def __init__(self, registry: ModelRegistry, port: int, host: str, max_message_bytes: int,
                 max_concurrent_rpcs: int, max_workers: int = 16):
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="grpc")
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", max_message_bytes)]
        self._server = grpc.server(self._executor, options=options, maximum_concurrent_rpcs=max_concurrent_rpcs)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(registry, max_message_bytes), self._server)
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"gRPC could not bind {host}:{port}")
        self._server.start()

    def stop(self, grace: float = 5.0) -> None:
        self._server.stop(grace).wait()
        self._executor.shutdown(wait=True)
