"""serving/: the TF Serving stand-in (REST + gRPC) and its clients, against a toy SavedModel
with our model's serving contract (tests/serving_toy_model.py)."""

import base64
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from serving_toy_model import (EMPTY_PROMPT_MESSAGE, WARMUP_RECORDS, expected_completion, expected_embedding,
                               free_port, write_toy_model)
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving import client as client_lib
from serving.batching import Batcher, BatchingError
from serving.client import GrpcClient, RestClient, ServingError
from serving.models import op_error_message, read_signature_defs
from serving.rest import response_json
from serving.server import parse_args, read_model_config, serve

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))  # Binary, not UTF-8: must travel as b64.


@pytest.fixture(scope="module")
def server(toy_model_base):
    with serve(model_base_path=toy_model_base, model_name="toy", port=0, rest_api_port=0,
               file_system_poll_wait_seconds=0) as s:
        yield s.wait_until_ready()


@pytest.fixture(scope="module")
def batching_server(toy_model_base):
    with serve(model_base_path=toy_model_base, model_name="toy", port=0, rest_api_port=0,
               file_system_poll_wait_seconds=0, enable_batching=True, max_batch_size=8,
               batch_timeout_micros=20000) as s:
        yield s.wait_until_ready()


@pytest.fixture(scope="module")
def direct(toy_model_base):
    return tf.saved_model.load(os.path.join(toy_model_base, "1"))


def rest_url(server, path=":predict", model="toy"):
    return f"http://localhost:{server.rest_port}/v1/models/{model}{path}"


def grpc_stub(server):
    channel = grpc.insecure_channel(f"localhost:{server.grpc_port}")
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


FULL_INPUTS = {  # Every input explicit, two rows.
    "prompt": np.array([b"h\xc3\xa9llo", b"ab"], dtype=object),
    "images": np.array([[PNG, b""], [b"", b""]], dtype=object),
    "max_new_tokens": np.array(7, np.int32), "temperature": np.array(0.5, np.float32),
    "top_k": np.array(3, np.int32), "top_p": np.array(0.9, np.float32), "seed": np.array(1, np.int32),
}


def test_tf_writes_signature_defaults_but_the_loaded_signature_needs_every_input(toy_model_base, direct):
    defaults = read_signature_defs(os.path.join(toy_model_base, "1"))["serving_default"].defaults
    assert set(defaults) == {"images", "max_new_tokens", "temperature", "top_k", "top_p", "seed"}
    assert tf.make_ndarray(defaults["max_new_tokens"]) == 16
    assert tf.make_ndarray(defaults["images"]).shape == (1, 0)
    with pytest.raises(TypeError, match="missing"):
        direct.signatures["serving_default"](prompt=tf.constant(["x"]))  # Hence the server fills them.


def test_rest_row_columnar_and_grpc_agree_with_the_saved_model(server, direct):
    want = {k: v.numpy() for k, v in direct.signatures["serving_default"](
        **{k: tf.constant(v) for k, v in FULL_INPUTS.items()}).items()}
    assert want["completion"][0].decode() == expected_completion(
        "héllo", [PNG], max_new_tokens=7, temperature=0.5, top_k=3, top_p=0.9, seed=1)

    scalars = {k: FULL_INPUTS[k].item() for k in ("max_new_tokens", "temperature", "top_k", "top_p", "seed")}
    columnar = {"inputs": {"prompt": ["héllo", "ab"], "images": [[b64(PNG), ""], ["", ""]], **scalars}}
    got = requests.post(rest_url(server), json=columnar).json()["outputs"]
    assert got == {"completion": [c.decode() for c in want["completion"]], "num_tokens": [5, 2]}

    rows = {"instances": [{"prompt": "héllo", "images": [b64(PNG), ""], **scalars},
                          {"prompt": "ab", "images": ["", ""], **scalars}]}
    got = requests.post(rest_url(server), json=rows).json()["predictions"]
    assert got == [{"completion": c.decode(), "num_tokens": int(n)}
                   for c, n in zip(want["completion"], want["num_tokens"])]

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "toy"
    for alias, value in FULL_INPUTS.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    response = grpc_stub(server).Predict(request, timeout=10)
    assert (response.model_spec.name, response.model_spec.version.value) == ("toy", 1)
    assert response.model_spec.signature_name == "serving_default"
    for alias in want:
        np.testing.assert_array_equal(tf.make_ndarray(response.outputs[alias]), want[alias])

    for client in (RestClient(f"http://localhost:{server.rest_port}", "toy"),
                   GrpcClient(f"localhost:{server.grpc_port}", "toy")):
        outputs = client.predict(FULL_INPUTS)
        np.testing.assert_array_equal(outputs["completion"], want["completion"])
        np.testing.assert_array_equal(outputs["num_tokens"], want["num_tokens"])
        assert outputs["num_tokens"].dtype == np.int32


def test_clients_send_every_input_one_value_per_row_as_tf_servings_batching_needs(server, monkeypatch):
    seen = []
    predict = server.registry.predict
    monkeypatch.setattr(server.registry, "predict", lambda name, version, signature, inputs, *rest: (
        seen.append(inputs) or predict(name, version, signature, inputs, *rest)))
    for client in (RestClient(f"http://localhost:{server.rest_port}", "toy"),
                   GrpcClient(f"localhost:{server.grpc_port}", "toy")):
        assert client.generate(["ab", "c"], top_k=3) == [
            {"completion": expected_completion(p, top_k=3), "num_tokens": len(p)} for p in ("ab", "c")]
        inputs = seen[-1]
        assert set(inputs) == {"prompt", "images", "max_new_tokens", "temperature", "top_k", "top_p", "seed"}
        assert {value.shape[0] for value in inputs.values()} == {2} and inputs["images"].shape == (2, 0)
        assert inputs["max_new_tokens"].tolist() == [16, 16] and inputs["top_k"].tolist() == [3, 3]


def test_score_and_embed_signatures(server, direct):
    prompts, responses = ["a", "bcd"], ["xy", ""]
    want = direct.signatures["score"](prompt=tf.constant(prompts), response=tf.constant(responses))
    embedding = direct.signatures["embed"](prompt=tf.constant(prompts))["embedding"].numpy()
    # Row format with a one-input signature: bare values in, bare values out.
    got = requests.post(rest_url(server), json={"signature_name": "embed", "instances": prompts}).json()
    assert got == {"predictions": embedding.tolist()}
    for client in (RestClient(f"http://localhost:{server.rest_port}", "toy"),
                   GrpcClient(f"localhost:{server.grpc_port}", "toy")):
        scores = client.score(prompts, responses)
        assert scores == [{"log_likelihood": float(s), "num_tokens": int(n)}
                          for s, n in zip(want["log_likelihood"].numpy(), want["num_tokens"].numpy())]
        np.testing.assert_array_equal(client.embed(prompts), embedding)
        np.testing.assert_array_equal(client.embed("abc"), expected_embedding("abc"))


def test_defaults_fill_omitted_inputs_and_images_travel_as_b64(server):
    got = requests.post(rest_url(server), json={"inputs": {"prompt": ["abc"]}}).json()
    assert got == {"outputs": {"completion": [expected_completion("abc")], "num_tokens": [3]}}
    got = requests.post(rest_url(server), json={
        "instances": [{"prompt": "abc", "images": [b64(PNG), b64(b"gif")], "top_k": 4}]}).json()
    assert got["predictions"][0]["completion"] == expected_completion("abc", [PNG, b"gif"], top_k=4)
    for client in (RestClient(f"http://localhost:{server.rest_port}", "toy"),
                   GrpcClient(f"localhost:{server.grpc_port}", "toy")):
        assert client.generate("abc") == {"completion": expected_completion("abc"), "num_tokens": 3}
        assert client.generate(["ab", "c"], images=[[PNG], [PNG, b"xy"]], seed=9) == [
            {"completion": expected_completion("ab", [PNG], seed=9), "num_tokens": 2},
            {"completion": expected_completion("c", [PNG, b"xy"], seed=9), "num_tokens": 1}]


def test_status_and_metadata(server, toy_model_base):
    available = {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert requests.get(rest_url(server, "")).json() == available
    assert requests.get(rest_url(server, "/versions/1")).json() == available
    response = requests.get(rest_url(server, "/versions/5"))
    assert response.status_code == 404 and "version 5" in response.json()["error"]

    metadata = requests.get(rest_url(server, "/metadata")).json()
    assert metadata["model_spec"] == {"name": "toy", "signature_name": "", "version": "1"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "score", "embed"} <= set(signatures)
    assert signatures["serving_default"]["defaults"]["max_new_tokens"]["int_val"] == [16]
    assert signatures["serving_default"]["inputs"]["prompt"]["dtype"] == "DT_STRING"
    assert requests.get(rest_url(server, "/versions/1/metadata")).json() == metadata

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "toy"
    response = grpc_stub(server).GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value == 1
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    assert dict(signature_map.signature_def) == read_signature_defs(os.path.join(toy_model_base, "1"))
    assert GrpcClient(f"localhost:{server.grpc_port}", "toy").metadata()["model_spec"]["version"] == "1"


GOOD = {"inputs": {"prompt": ["ok"]}}
# One request row with every input, as TF Serving's batching needs: the defaults of expected_completion.
FULL_ROW = {"images": [[]], "max_new_tokens": [16], "temperature": [0.0], "top_k": [0], "top_p": [1.0], "seed": [0]}

BAD_REQUESTS = [  # (path, body, HTTP status, words the error must contain)
    (":predict", b'{"inputs": {"prompt": ["a"]', 400, ["JSON Parse error"]),
    (":predict", {"inputs": {"max_new_tokens": 3}}, 400, ["Missing input 'prompt'", "no default"]),
    (":predict", {"inputs": {"prompt": ["a"], "bogus": 1}}, 400, ["Unknown input 'bogus'", "prompt", "top_k"]),
    (":predict", {"inputs": {"prompt": ["a"], "max_new_tokens": "ten"}}, 400, ["max_new_tokens", "int32", "String"]),
    (":predict", {"inputs": {"prompt": ["a"], "max_new_tokens": 2.5}}, 400, ["max_new_tokens", "int32"]),
    (":predict", {"inputs": {"prompt": [5]}}, 400, ["prompt", "string", "Number"]),
    (":predict", {"inputs": {"prompt": [["a"]]}}, 400, ["prompt", "shape"]),
    (":predict", {"inputs": {"prompt": ["a"]}, "instances": []}, 400, ["only one of 'inputs' or 'instances'"]),
    (":predict", {"instances": [{"prompt": "a"}, {"prompt": "b", "seed": 1}]}, 400, ["element: 1", "keys"]),
    (":predict", {"signature_name": "nope", "inputs": {"prompt": ["a"]}}, 400, ['"nope" not found', "embed"]),
    (":predict", {"inputs": {"prompt": ["ok", ""]}}, 400, [EMPTY_PROMPT_MESSAGE]),
    ("/versions/9:predict", GOOD, 404, ["Specific(toy, 9)"]),
    ("/labels/stable:predict", GOOD, 400, ["label", "stable"]),
    (":classify", GOOD, 501, ["classify"]),
]


@pytest.mark.parametrize("path,body,status,words", BAD_REQUESTS, ids=[str(i) for i in range(len(BAD_REQUESTS))])
def test_bad_rest_requests_fail_alone(server, path, body, status, words):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = requests.post(rest_url(server, path), data=data)
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for word in words:
        assert word in message
    assert message.count("\n") == 0 or "Graph execution" not in message
    assert requests.post(rest_url(server), json=GOOD).status_code == 200


def test_unknown_model_is_404(server):
    response = requests.post(rest_url(server, model="nope"), json=GOOD)
    assert response.status_code == 404 and "nope" in response.json()["error"]
    assert requests.get(rest_url(server, "", model="nope")).status_code == 404
    with pytest.raises(ServingError) as error:
        GrpcClient(f"localhost:{server.grpc_port}", "nope", retries=0).generate("x")
    assert error.value.status == grpc.StatusCode.NOT_FOUND and "nope" in error.value.message


def test_bad_grpc_requests(server):
    stub = grpc_stub(server)

    def predict(model="toy", label=None, **inputs):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        if label:
            request.model_spec.version_label = label
        for alias, value in inputs.items():
            request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(request, timeout=10)
        return error.value.code(), error.value.details()

    code, message = predict(prompt=np.array([1, 2], np.int32))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'prompt'" in message and "string" in message
    code, message = predict(prompt=np.array([b"a"], object), max_new_tokens=np.array(3, np.int64))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "int32" in message and "int64" in message
    code, message = predict(prompt=np.array([b""], object))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and EMPTY_PROMPT_MESSAGE in message
    assert predict(model="nope", prompt=np.array([b"a"], object))[0] == grpc.StatusCode.NOT_FOUND
    assert predict(label="canary", prompt=np.array([b"a"], object))[0] == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as error:
        stub.Classify(classification_pb2.ClassificationRequest(), timeout=10)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert GrpcClient(f"localhost:{server.grpc_port}", "toy").generate("ok")["num_tokens"] == 2


def test_model_errors_keep_the_ops_own_message():
    message = ("Graph execution error:\n\nDetected at node check defined at (most recent call last):\n"
               '  File "model.py", line 3, in generate\n    tf.debugging.assert_less(n, 8)\n'
               "prompt too long: 9 tokens > 8\n\t [[{{node check}}]] [Op:__inference_generate_9]")
    error = tf.errors.InvalidArgumentError(None, None, message)
    assert op_error_message(error) == "prompt too long: 9 tokens > 8"
    assert op_error_message(tf.errors.InvalidArgumentError(None, None, "plain [Op:X]")) == "plain"


def test_json_outputs_like_tf_serving():
    outputs = {"scores": np.array([0.2, np.nan, -np.inf], np.float32),
               "blob_bytes": np.array([b"\xff\x00"], object), "text": np.array(["é".encode()], object)}
    text = json.dumps(response_json(outputs, "columnar"))
    assert '"scores": [0.2, NaN, -Infinity]' in text
    assert json.loads(text)["outputs"]["blob_bytes"] == [{"b64": "/wA="}]
    assert json.loads(text)["outputs"]["text"] == ["é"]


def test_version_reload_and_warmup(tmp_path, caplog):
    caplog.set_level("INFO", logger="serving")
    base = str(tmp_path / "toy")
    write_toy_model(base, 1)
    with serve(model_base_path=base, model_name="toy", port=0, rest_api_port=0,
               file_system_poll_wait_seconds=0.1) as server:
        assert server.registry.managers["toy"].current.warmup_records == WARMUP_RECORDS
        client = RestClient(f"http://localhost:{server.rest_port}", "toy")
        assert client.generate("ab")["completion"] == expected_completion("ab", tag="v1")
        os.makedirs(os.path.join(base, "3", "variables"))  # Half-written: no saved_model.pb yet.
        write_toy_model(base, 2, tag="v2", scale=2.0)
        deadline = time.monotonic() + 30
        while client.generate("ab")["completion"] != expected_completion("ab", tag="v2"):
            assert time.monotonic() < deadline, "version 2 was not picked up"
            time.sleep(0.05)
        np.testing.assert_array_equal(client.embed("abc"), expected_embedding("abc", scale=2.0))
        deadline = time.monotonic() + 10
        while client.status()["model_version_status"][-1]["state"] != "END":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        states = {s["version"]: s["state"] for s in client.status()["model_version_status"]}
        assert states == {"2": "AVAILABLE", "1": "END"}
        assert requests.get(rest_url(server, "/versions/1/metadata")).status_code == 404
    logged = caplog.text
    assert f"Loaded model toy version 1 ({WARMUP_RECORDS} warmup records)" in logged
    assert f"Loaded model toy version 2 ({WARMUP_RECORDS} warmup records)" in logged
    assert "Unloaded model toy version 1" in logged


def test_a_version_only_the_python_object_loader_runs_is_refused_and_the_previous_one_serves(tmp_path):
    base = str(tmp_path / "toy")
    write_toy_model(base, 1)
    with serve(model_base_path=base, model_name="toy", port=0, rest_api_port=0,
               file_system_poll_wait_seconds=0.1) as server:
        broken = write_toy_model(base, 2, keras_variables=True)
        forgiving = tf.saved_model.load(broken)  # the Python object loader runs it
        assert forgiving.embed(tf.constant(["ab"]))["embedding"].shape == (1, 4)
        client = RestClient(f"http://localhost:{server.rest_port}", "toy")
        deadline = time.monotonic() + 30
        while "2" not in {s["version"] for s in client.status()["model_version_status"]
                          if s["state"] == "END"}:
            assert time.monotonic() < deadline, "version 2 was not tried"
            time.sleep(0.05)
        status = next(s for s in client.status()["model_version_status"] if s["version"] == "2")
        assert "Could not find variable" in status["status"]["error_message"]
        assert server.registry.managers["toy"].current.version == 1
        assert client.generate("ab")["completion"] == expected_completion("ab", tag="v1")


def test_concurrent_clients_are_batched(batching_server):
    before = batching_server.batcher.stats()
    failures = []

    def worker(i):
        client = (RestClient(f"http://localhost:{batching_server.rest_port}", "toy") if i % 2 else
                  GrpcClient(f"localhost:{batching_server.grpc_port}", "toy"))
        try:
            for j in range(20):
                prompt = f"c{i}r{j}"
                if j % 3 == 0:
                    got, want = client.generate(prompt), expected_completion(prompt)
                else:
                    got, want = (client.generate(prompt, max_new_tokens=j, top_p=0.5),
                                 expected_completion(prompt, max_new_tokens=j, top_p=0.5))
                if got != {"completion": want, "num_tokens": len(prompt)}:
                    failures.append((got, want))
        except Exception as e:  # Reported below, from the main thread.
            failures.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    stats = batching_server.batcher.stats()
    assert stats["requests"] - before["requests"] >= 16 * 20
    assert stats["merged_calls"] > before["merged_calls"], stats
    assert stats["max_rows_per_call"] <= 8


def test_batching_refuses_what_tf_servings_batching_session_refuses(batching_server):
    for inputs, message in [({"prompt": ["ok"]}, "must have at least one dimension"),  # scalar defaults
                            (dict(FULL_ROW, prompt=["a", "b"]), "must have equal 0th-dimension size")]:
        response = requests.post(rest_url(batching_server), json={"inputs": inputs})
        assert response.status_code == 400 and message in response.json()["error"]
    response = requests.post(rest_url(batching_server), json={"inputs": dict(FULL_ROW, prompt=["ok"])})
    assert response.json()["outputs"]["completion"] == [expected_completion("ok")]


def test_batched_bad_request_fails_only_itself(batching_server):
    barrier = threading.Barrier(6)
    results = {}

    def send(i):
        prompt = "" if i == 0 else f"p{i}"
        barrier.wait()
        results[i] = requests.post(rest_url(batching_server), json={"inputs": dict(FULL_ROW, prompt=[prompt])})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0].status_code == 400 and EMPTY_PROMPT_MESSAGE in results[0].json()["error"]
    for i in range(1, 6):
        assert results[i].json()["outputs"]["completion"] == [expected_completion(f"p{i}")]


def test_batcher_merges_and_splits_and_runs_each_request_alone_when_a_merged_call_fails():
    calls = []

    def call(inputs):
        calls.append({k: v.copy() for k, v in inputs.items()})
        if any(v == b"bad" for v in inputs["x"]):
            raise ValueError("bad row")
        return {"y": np.char.add(inputs["x"].astype(bytes), inputs["n"].astype(bytes)).astype(object)}

    batcher = Batcher(max_batch_size=4, batch_timeout_micros=500_000)
    requests_ = [{"x": np.array([b"a", b"b"], object), "n": np.array([1, 1], np.int32)},
                 {"x": np.array([b"c"], object), "n": np.array([2], np.int32)},
                 {"x": np.array([b"bad"], object), "n": np.array([3], np.int32)}]
    results = [None] * 3

    def run(i):
        try:
            results[i] = batcher.run("g", requests_[i], call)["y"].tolist()
        except ValueError as e:
            results[i] = str(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [[b"a1", b"b1"], [b"c2"], "bad row"]
    assert calls[0]["x"].shape == (4,)  # merged
    assert len(calls) == 4  # The merged call failed, so each request ran alone.
    assert batcher.stats()["merged_calls"] == 0
    big = {"x": np.array([b"a"] * 5, object), "n": np.array([1] * 5, np.int32)}  # Above max_batch_size: alone.
    assert len(batcher.run("g", big, lambda t: {"y": t["x"]})["y"]) == 5
    with pytest.raises(BatchingError, match="at least one dimension"):
        batcher.run("g", {"x": np.array([b"a"], object), "n": np.array(1, np.int32)}, call)


def test_batches_are_padded_to_allowed_batch_sizes_with_the_last_requests_first_row():
    seen = []

    def call(inputs):
        seen.append(inputs["x"].tolist())
        return {"y": np.char.add(inputs["x"].astype(bytes), b"!").astype(object)}

    with pytest.raises(ValueError, match="must equal max_batch_size"):
        Batcher(max_batch_size=8, allowed_batch_sizes=[1, 2, 4])
    batcher = Batcher(max_batch_size=4, batch_timeout_micros=500_000, allowed_batch_sizes=[1, 2, 4])
    barrier = threading.Barrier(2)
    results = {}

    def run(name, rows):
        barrier.wait()
        time.sleep(0.05 if name == "second" else 0)  # so that "first" leads the batch
        results[name] = batcher.run("g", {"x": np.array(rows, object)}, call)["y"].tolist()

    threads = [threading.Thread(target=run, args=("first", [b"a", b"b"])),
               threading.Thread(target=run, args=("second", [b"c"]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"first": [b"a!", b"b!"], "second": [b"c!"]}
    assert seen == [[b"a", b"b", b"c", b"c"]]  # 3 rows padded to 4 with "c", the padding's outputs dropped
    assert batcher.run("g", {"x": np.array([b"d"] * 3, object)}, call)["y"].tolist() == [b"d!"] * 3
    assert seen[-1] == [b"d"] * 4


class _StubHandler(http.server.BaseHTTPRequestHandler):
    statuses: list = []
    seen: list = []

    def do_GET(self):
        self.seen.append(self.path)
        status = self.statuses.pop(0) if self.statuses else 200
        body = json.dumps({"error": "busy"} if status != 200 else {"model_version_status": []}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("statuses,calls,ok", [([503, 503], 3, True), ([400], 1, False), ([500], 1, False)])
def test_rest_client_retries_only_transient_errors(statuses, calls, ok):
    _StubHandler.statuses, _StubHandler.seen = list(statuses), []
    stub = http.server.ThreadingHTTPServer(("localhost", 0), _StubHandler)
    thread = threading.Thread(target=stub.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        client = RestClient(f"http://localhost:{stub.server_address[1]}", "toy", retries=3, backoff=0.01)
        if ok:
            assert client.status() == {"model_version_status": []}
        else:
            with pytest.raises(ServingError) as error:
                client.status()
            assert error.value.status == statuses[0] and error.value.message == "busy"
        assert len(_StubHandler.seen) == calls
    finally:
        stub.shutdown()
        stub.server_close()
        thread.join()


def test_rest_client_waits_for_a_server_that_starts_late(toy_model_base):
    port = free_port()
    started = []
    starter = threading.Timer(0.5, lambda: started.append(
        serve(model_base_path=toy_model_base, model_name="toy", port=None, rest_api_port=port,
              file_system_poll_wait_seconds=0)))
    starter.start()
    try:
        client = RestClient(f"http://localhost:{port}", "toy", retries=6, backoff=0.1)
        assert client.generate("late")["completion"] == expected_completion("late")
    finally:
        starter.join()
        for s in started:
            s.stop()


def test_client_cli_prints_the_completion(server, tmp_path, capsys):
    image = tmp_path / "cat.png"
    image.write_bytes(PNG)
    assert client_lib.main(["--url", f"http://localhost:{server.rest_port}", "--model_name", "toy",
                            "--max_new_tokens", "5", "--image", str(image), "hello"]) == 0
    assert capsys.readouterr().out == expected_completion("hello", [PNG], max_new_tokens=5) + "\n"
    assert client_lib.main(["--url", f"grpc://localhost:{server.grpc_port}", "--model_name", "toy",
                            "--temperature", "0.7", "a", "bc"]) == 0
    assert capsys.readouterr().out.splitlines() == [expected_completion("a", temperature=0.7),
                                                    expected_completion("bc", temperature=0.7)]
    assert client_lib.main(["--url", f"http://localhost:{server.rest_port}", "--model_name", "toy", ""]) == 1
    assert EMPTY_PROMPT_MESSAGE in capsys.readouterr().err


def test_stop_leaves_no_threads(toy_model_base):
    before = set(threading.enumerate())
    server = serve(model_base_path=toy_model_base, model_name="toy", port=0, rest_api_port=0,
                   file_system_poll_wait_seconds=0.1, enable_batching=True)
    session = requests.Session()  # Keep-alive: its connection's thread must end too.
    assert session.post(rest_url(server), json={"inputs": dict(FULL_ROW, prompt=["ok"])}).status_code == 200
    assert GrpcClient(f"localhost:{server.grpc_port}", "toy").generate("x")["num_tokens"] == 1
    server.stop()
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(threading.enumerate()) - before


def test_model_config_file_serves_several_models(toy_model_base, tmp_path):
    other = str(tmp_path / "other")
    write_toy_model(other, 4, tag="other")
    config = tmp_path / "models.config"
    config.write_text(f"""model_config_list {{
      config {{ name: "toy" base_path: "{toy_model_base}" model_platform: "tensorflow" }}
      config {{ name: "other" base_path: "{other}" model_platform: "tensorflow" }}
    }}""")
    assert read_model_config(str(config)) == {"toy": toy_model_base, "other": other}
    with serve(model_config_file=str(config), port=None, rest_api_port=0) as server:
        url = f"http://localhost:{server.rest_port}"
        assert RestClient(url, "toy").generate("a")["completion"] == expected_completion("a", tag="v1")
        assert RestClient(url, "other", version=4).generate("a")["completion"] == expected_completion("a", tag="other")


def test_rest_predictions_past_the_timeout_answer_504(toy_model_base, monkeypatch):
    with serve(model_base_path=toy_model_base, model_name="toy", port=None, rest_api_port=0,
               rest_api_timeout_in_ms=100) as server:
        predict = server.registry.predict
        monkeypatch.setattr(server.registry, "predict", lambda *a: time.sleep(0.5) or predict(*a))
        response = requests.post(rest_url(server), json=GOOD)
        assert response.status_code == 504 and "rest_api_timeout_in_ms=100" in response.json()["error"]


def test_server_flags(tmp_path):
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 500 }\n"
                        "num_batch_threads { value: 4 }\nallowed_batch_sizes: 8\nallowed_batch_sizes: 32\n")
    args = parse_args(["--model_name=m", "--model_base_path=/m", "--enable_batching",
                       f"--batching_parameters_file={batching}", "--rest_api_port=0"])
    assert (args.enable_batching, args.max_batch_size, args.batch_timeout_micros) == (True, 32, 500)
    assert args.allowed_batch_sizes == [8, 32]
    assert (args.port, args.rest_api_port, args.file_system_poll_wait_seconds) == (8500, 0, 1)
    with pytest.raises(SystemExit):
        parse_args(["--model_name=m"])


def test_server_command_line(toy_model_base):
    grpc_port, rest_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         "--model_name=toy", f"--model_base_path={toy_model_base}", "--enable_batching"],
        stderr=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        client = GrpcClient(f"localhost:{grpc_port}", "toy", retries=8, backoff=0.25)
        assert client.generate("cli")["completion"] == expected_completion("cli")
        assert RestClient(f"http://localhost:{rest_port}", "toy").generate("x")["num_tokens"] == 1
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert f"Loaded model toy version 1 ({WARMUP_RECORDS} warmup records)" in stderr
    # Loopback unless --host says otherwise: the server has no authentication.
    assert f"REST API listening on 127.0.0.1:{rest_port}" in stderr
    assert f"gRPC API listening on 127.0.0.1:{grpc_port}" in stderr and "no authentication" not in stderr
