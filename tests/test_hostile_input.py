"""What a careless or hostile client sends, against the local server: malformed and oversized HTTP, deep JSON,
slow and idle clients, crowds, and requests over the export's own limits, with the server's memory measured
around the refusals. Traffic goes to 127.0.0.1 only; every loop is bounded.

The first part runs the toy SavedModel in process with small limits; the last runs `python -m serving.server`
as a process on the tiny Gemma 3 export, as it is deployed.
"""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import requests
import tensorflow as tf
from serving_toy_model import free_port
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from gemma3_tf.export import BATCHING_PARAMETERS
from serving.client import GrpcClient, RestClient, ServingError
from serving.server import ModelServer, serve

HOST = "127.0.0.1"
GOOD = {"inputs": {"prompt": ["ok"]}}
READ_TIMEOUT_MS = 600
MAX_BODY_BYTES = 1 << 20


@pytest.fixture(scope="module")
def server(toy_model_base):
    with serve(model_base_path=toy_model_base, model_name="toy", port=0, rest_api_port=0, file_system_poll_wait_seconds=0,
               rest_api_max_body_bytes=MAX_BODY_BYTES, rest_api_read_timeout_in_ms=READ_TIMEOUT_MS,
               grpc_max_message_bytes=MAX_BODY_BYTES) as s:
        yield s.wait_until_ready()


def predict_url(server):
    return f"http://{HOST}:{server.rest_port}/v1/models/toy:predict"


def raw_exchange(server, data: bytes, then_wait: float = 5.0) -> tuple[int, dict, dict]:
    """Sends `data` on a fresh connection and reads one answer: (status, headers, JSON body). A reset raises."""
    with socket.create_connection((HOST, server.rest_port), timeout=then_wait + 5) as sock:
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer after {received!r}"
            received += chunk
        head, body = received.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        while len(body) < int(headers["Content-Length"]):
            chunk = sock.recv(65536)
            assert chunk, "connection closed in the middle of the answer"
            body += chunk
        return int(lines[0].split()[1]), headers, json.loads(body)


def post_head(extra: str) -> bytes:
    return (f"POST /v1/models/toy:predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"{extra}\r\n").encode()


def assert_still_serving(server):
    assert requests.post(predict_url(server), json=GOOD, timeout=30).status_code == 200
    assert GrpcClient(f"{HOST}:{server.grpc_port}", "toy").generate("ok")["num_tokens"] >= 1


@pytest.mark.parametrize("headers, status, words", [
    ("Content-Length: abc\r\n", 400, "Content-Length must be a number"),
    ("Content-Length: -5\r\n", 400, "Content-Length must be a number"),
    ("", 411, "needs a Content-Length"),
    ("Transfer-Encoding: chunked\r\n", 411, "chunked"),
    (f"Content-Length: {MAX_BODY_BYTES + 1}\r\n", 413, f"over rest_api_max_body_bytes={MAX_BODY_BYTES}"),
])
def test_malformed_or_oversized_http_gets_json_4xx(server, headers, status, words):
    code, headers, body = raw_exchange(server, post_head(headers))
    assert (code, headers["Content-Type"], headers["Connection"]) == (status, "application/json", "close")
    assert words in body["error"]
    assert_still_serving(server)


def test_an_oversized_body_is_answered_413_while_the_client_is_still_sending(server):
    body = b'{"inputs": {"prompt": ["' + b"x" * (4 * MAX_BODY_BYTES) + b'"]}}'
    response = requests.post(predict_url(server), data=body, timeout=30)  # no ConnectionResetError
    assert response.status_code == 413 and "rest_api_max_body_bytes" in response.json()["error"]
    assert_still_serving(server)


def test_slow_or_short_bodies_answer_408_and_idle_connections_close(server):
    start = time.monotonic()
    code, _, body = raw_exchange(server, post_head("Content-Length: 100\r\n") + b'{"inputs":')
    assert code == 408 and "10 of 100 body bytes" in body["error"]
    assert "rest_api_read_timeout_in_ms=600" in body["error"]
    assert time.monotonic() - start < 5
    # A client that sends a byte now and then, each within the read timeout, is cut off at the deadline.
    with socket.create_connection((HOST, server.rest_port), timeout=10) as sock:
        sock.sendall(post_head("Content-Length: 100\r\n"))
        for _ in range(4):
            time.sleep(READ_TIMEOUT_MS / 1000 / 3)
            try:
                sock.sendall(b" ")
            except OSError:
                break
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408"), answer
    with socket.create_connection((HOST, server.rest_port), timeout=10) as sock:
        time.sleep(READ_TIMEOUT_MS / 1000 + 0.5)  # idle: the server closes its side
        assert sock.recv(1) == b""
    assert_still_serving(server)


@pytest.mark.parametrize("body, words", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"inputs": {"prompt": ' + b"[" * 40 + b'"x"' + b"]" * 40 + b"}}", "nested deeper than 32 levels"),
    (b'{"instances": [' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"]}", "nested too deeply"),
])
def test_deep_json_is_400(server, body, words):
    response = requests.post(predict_url(server), data=body, timeout=30)
    assert response.status_code == 400 and words in response.json()["error"]
    assert_still_serving(server)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
def test_other_methods_are_405_with_json(server, method):
    response = requests.request(method, predict_url(server), data=b"{}", timeout=30)
    assert response.status_code == 405 and response.headers["Allow"] == "GET, POST"
    if method != "HEAD":
        assert method in response.json()["error"]


def test_http_servers_own_refusals_are_json(server):
    code, _, body = raw_exchange(server, b"GET /v1/models/toy HTTP/1.1\r\n" + b"X-Long: " + b"a" * 70_000 + b"\r\n\r\n")
    assert code == 431 and "error" in body
    code, _, body = raw_exchange(server, b"GET /v1/models/toy HTTP/1.1\r\n" + b"X-A: a\r\n" * 101 + b"\r\n")
    assert code == 431 and "Too many headers" in body["error"]


def test_64_concurrent_clients_a_third_bad_all_answered_without_resets(server):
    bad_bodies = [b"{not json", json.dumps({"inputs": {"prompt": [5]}}).encode(),
                  json.dumps({"inputs": {"prompt": ["ok"], "bogus": 1}}).encode()]

    def client(number):
        bad = number % 3 == 0
        body = bad_bodies[number % 9 // 3] if bad else json.dumps({"inputs": {"prompt": [f"client {number}"]}}).encode()
        try:  # a fresh connection each: the crowd arrives at the listen backlog at once
            response = requests.post(predict_url(server), data=body, timeout=60, headers={"Connection": "close"})
        except requests.ConnectionError as error:
            return number, bad, repr(error)
        return number, bad, response.status_code

    for _ in range(3):  # resets were intermittent (2 to 5 of 30 per run): several rounds
        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(client, range(64)))
        assert all(code == 200 for _, bad, code in answers if not bad), answers
        assert all(code == 400 for _, bad, code in answers if bad), answers
    grpc_client = GrpcClient(f"{HOST}:{server.grpc_port}", "toy")
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda n: grpc_client.generate(f"client {n}")["num_tokens"], range(64)))
    assert all(n >= 1 for n in results)


def test_connections_beyond_capacity_get_503_with_retry_after(toy_model_base):
    with serve(model_base_path=toy_model_base, model_name="toy", port=None, rest_api_port=0,
               file_system_poll_wait_seconds=0, rest_api_max_connections=2) as crowded:
        crowded.wait_until_ready()
        sessions = [requests.Session() for _ in range(2)]  # two keep-alive connections hold both places
        for session in sessions:
            assert session.post(predict_url(crowded), json=GOOD, timeout=30).status_code == 200
        response = requests.post(predict_url(crowded), json=GOOD, timeout=30)
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert "rest_api_max_connections=2" in response.json()["error"]
        for session in sessions:
            session.close()
        deadline = time.monotonic() + 10
        while requests.post(predict_url(crowded), json=GOOD, timeout=30).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_grpc_messages_over_the_limit_are_refused_before_parsing(server):
    client = GrpcClient(f"{HOST}:{server.grpc_port}", "toy", retries=0)
    with pytest.raises(ServingError, match="RESOURCE_EXHAUSTED|larger than max"):
        client.generate("x" * (2 * MAX_BODY_BYTES))
    assert_still_serving(server)


def test_grpc_tensors_claiming_more_than_they_carry_are_refused_before_allocation(server):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"{HOST}:{server.grpc_port}"))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "toy"
    request.inputs["prompt"].CopyFrom(tf.make_tensor_proto(["ok"]))
    # One value for a shape of 2e9: tf.make_ndarray would repeat it into 8 GB.
    claim = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[0.5])
    claim.tensor_shape.dim.add(size=2_000_000_000)
    request.inputs["temperature"].CopyFrom(claim)
    assert len(request.SerializeToString()) < 100
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "temperature: shape [2000000000] holds more than the grpc_max_message_bytes" in error.value.details()
    assert_still_serving(server)


def test_loopback_by_default_and_a_warning_when_opened(toy_model_base, caplog):
    with caplog.at_level(logging.WARNING, logger="serving"):
        ModelServer({"toy": toy_model_base}, port=None, rest_api_port=None, file_system_poll_wait_seconds=0).stop()
        assert not caplog.records
        ModelServer({"toy": toy_model_base}, port=None, rest_api_port=None, file_system_poll_wait_seconds=0,
                    host="0.0.0.0").stop()  # no port opened: only the warning is under test
    assert "no authentication" in caplog.text


# --- The tiny Gemma 3 export behind the server process ------------------------------------------------------


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024


@pytest.fixture(scope="module")
def gemma_server_process(tiny_text_export):
    """`python -m serving.server` holding the tiny text export (max_length 48, so max_prompt_bytes 2304;
    max_rows 64), with the export's batching parameters, as deployed."""
    _, path = tiny_text_export
    base = os.path.dirname(os.path.dirname(path))
    grpc_port, rest_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         "--model_name=tiny", f"--model_base_path={os.path.dirname(path)}", "--enable_batching",
         f"--batching_parameters_file={os.path.join(base, BATCHING_PARAMETERS)}"],
        stderr=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        rest = RestClient(f"http://{HOST}:{rest_port}", "tiny", timeout=120, retries=40, backoff=0.5)
        rest.generate("warm", max_new_tokens=2)
        yield process, rest, GrpcClient(f"{HOST}:{grpc_port}", "tiny", timeout=120)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


def test_requests_over_the_exports_limits_are_refused_and_memory_stays_flat(gemma_server_process):
    process, rest, grpc_client = gemma_server_process
    refused = [  # (prompts, generation parameters, words of the error, its refusal's code, field and row)
        (["x" * (8 << 20)], {}, "`prompt[0]` is longer than the max_prompt_bytes=2304 bytes",
         ("too_long", "prompt", 0)),
        (["hi"] * 1000, {}, "`prompt` holds 1000 rows; this export takes at most max_rows=64",
         ("too_many_rows", "prompt", None)),
        (["hi " * 700], {}, "`prompt[0]` is too long", ("too_long", "prompt", 0)),
        (["hi"], {"temperature": float("inf")}, "`temperature[0]` must be finite",
         ("invalid_parameter", "temperature", 0)),
    ]
    for client in (rest, grpc_client):
        for prompts, parameters, words, refusal in refused:
            with pytest.raises(ServingError, match=re.escape(words)) as error:
                client.generate(prompts, max_new_tokens=2, **parameters)
            assert error.value.status in (400, grpc.StatusCode.INVALID_ARGUMENT)
            assert (error.value.refusal.code, error.value.refusal.field, error.value.refusal.row) == refusal
    # The largest two again and again. The allocators keep some of what the first rounds freed (measured: +90
    # MiB by the third round, then within +-40 MiB), so growth is measured after five rounds, over twenty that
    # send 320 MB of prompts: holding on to a fifth of each would be 64 MiB.
    for round in range(25):
        if round == 5:
            before = rss_mib(process.pid)
        for client in (rest, grpc_client):
            for prompts, parameters, *_ in refused[:2]:
                with pytest.raises(ServingError):
                    client.generate(prompts, max_new_tokens=2, **parameters)
    after = rss_mib(process.pid)
    assert after - before < 64, f"server memory grew from {before:.0f} to {after:.0f} MiB over 80 refusals"
    assert rest.generate("still serving", max_new_tokens=2)["num_tokens"] >= 1
    assert process.poll() is None
