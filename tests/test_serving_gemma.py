"""The exported Gemma 3 SavedModels behind the local TF Serving-compatible server, over loopback: REST and
gRPC answers equal the in-process model's, bad requests get 4xx with the model's message."""

import base64
import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from gemma3_tf import cli
from gemma3_tf.export import BATCHING_PARAMETERS
from serving.client import GrpcClient, RestClient, ServingError
from serving.server import read_batching_parameters, serve
from test_preprocessing import png
from tiny_exports import PROMPTS, in_process


@pytest.fixture(scope="module")
def text_server(tiny_text_export):
    causal_lm, path = tiny_text_export
    with serve(model_base_path=os.path.dirname(path), model_name="tiny", port=0, rest_api_port=0,
               file_system_poll_wait_seconds=0) as server:
        server.wait_until_ready()
        yield causal_lm, server


@pytest.fixture(scope="module")
def batching_text_server(tiny_text_export):
    """With the export's batching_parameters.txt, as tensorflow_model_server takes it."""
    causal_lm, path = tiny_text_export
    parameters = read_batching_parameters(os.path.join(os.path.dirname(os.path.dirname(path)), BATCHING_PARAMETERS))
    with serve(model_base_path=os.path.dirname(path), model_name="tiny", port=0, rest_api_port=0,
               enable_batching=True, file_system_poll_wait_seconds=0, **parameters) as server:
        server.wait_until_ready()
        yield causal_lm, server


def clients(server, model_name="tiny"):
    return (RestClient(f"http://localhost:{server.rest_port}", model_name, timeout=120),
            GrpcClient(f"localhost:{server.grpc_port}", model_name, timeout=120))


def test_rest_and_grpc_completions_equal_the_in_process_model(text_server):
    causal_lm, server = text_server
    rest, grpc = clients(server)
    expected = in_process(causal_lm, PROMPTS, 10)
    for client in (rest, grpc):
        assert [r["completion"] for r in client.generate(PROMPTS, max_new_tokens=10)] == expected
    # TF Serving's row format, as any HTTP client sends it.
    body = {"instances": [{"prompt": prompt, "max_new_tokens": 10} for prompt in PROMPTS]}
    response = requests.post(f"http://localhost:{server.rest_port}/v1/models/tiny:predict", json=body, timeout=120)
    assert response.status_code == 200
    assert [row["completion"] for row in response.json()["predictions"]] == expected
    assert rest.status()["model_version_status"][0]["state"] == "AVAILABLE"
    signatures = grpc.metadata()["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "score", "embed"} <= set(signatures)


def test_the_server_process_loads_only_the_op_libraries_its_export_uses(tiny_text_export):
    """The local server, in a process of its own (this one has imported TF Text whole): of TF Text's op libraries
    it loads the SentencePiece one alone, and answers as in process; without that library the session loader
    refuses the export."""
    causal_lm, path = tiny_text_export
    child = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import serving.models
        from serving.models import Servable
        if sys.argv[1] == "none":
            serving.models.register_op_libraries = lambda path: None
        try:
            servable = Servable("tiny", 1, {path!r})
        except Exception as error:
            print(json.dumps({{"error": str(error).splitlines()[0]}}))
            sys.exit()
        inputs = servable.prepare("serving_default", {{"prompt": np.array({[p.encode() for p in PROMPTS]!r}),
                                                       "max_new_tokens": np.array([6, 6], np.int32)}})
        completions = [c.decode() for c in servable.call("serving_default", inputs)["completion"]]
        libraries = sorted({{line.split("/")[-1].strip() for line in open("/proc/self/maps")
                            if "tensorflow_text" in line}})
        print(json.dumps({{"completions": completions, "libraries": libraries,
                          "tensorflow_text imported": "tensorflow_text" in sys.modules}}))
    """)

    def run(registering):
        result = subprocess.run([sys.executable, "-c", child, registering], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.splitlines()[-1])

    assert run("export's") == {"completions": in_process(causal_lm, PROMPTS, 6),
                               "libraries": ["_sentencepiece_tokenizer.so"], "tensorflow_text imported": False}
    assert "Op type not registered 'Sentencepiece" in run("none")["error"]


def test_concurrent_clients_all_succeed_through_tf_serving_style_batching(batching_text_server):
    causal_lm, server = batching_text_server
    assert server.registry.managers["tiny"].current.warmup_records == 12  # replayed through the batcher
    expected = dict(zip(PROMPTS, in_process(causal_lm, PROMPTS, 4)))

    def client_session(number):
        client = clients(server)[number % 2]
        return [client.generate(PROMPTS[(number + i) % 2], max_new_tokens=4) for i in range(20)]

    with ThreadPoolExecutor(16) as pool:
        sessions = list(pool.map(client_session, range(16)))
    for number, results in enumerate(sessions):
        assert [r["completion"] for r in results] == [expected[PROMPTS[(number + i) % 2]] for i in range(20)]
    assert server.batcher.stats()["merged_calls"] > 0
    # What TF Serving's batching refuses: an omitted input takes its scalar SignatureDef default.
    response = requests.post(f"http://localhost:{server.rest_port}/v1/models/tiny:predict",
                             json={"inputs": {"prompt": ["x"]}}, timeout=120)
    assert response.status_code == 400 and "must have at least one dimension" in response.json()["error"]


@pytest.mark.parametrize("inputs, status, message", [
    ({"prompt": [""]}, 400, r"`prompt[0]` is empty"),
    ({"prompt": ["x"], "top_k": 999}, 400, "`top_k[0]` must be at most 256"),
    ({"prompt": ["x " * 40]}, 400, "is too long"),
    ({"prompt": [1]}, 400, "prompt"),
    ({"prompt": ["x"], "temperature": "hot"}, 400, "temperature"),
])
def test_bad_requests_get_4xx_and_the_server_keeps_serving(text_server, inputs, status, message):
    _, server = text_server
    url = f"http://localhost:{server.rest_port}/v1/models/tiny:predict"
    response = requests.post(url, json={"inputs": inputs}, timeout=120)
    assert response.status_code == status and message in response.json()["error"]
    rest, grpc = clients(server)
    with pytest.raises(ServingError, match="empty"):
        grpc.generate("  ")
    assert rest.generate("still here", max_new_tokens=2)["num_tokens"] >= 1


def test_query_command(text_server, capsys):
    causal_lm, server = text_server
    code = cli.main(["query", "--url", f"grpc://localhost:{server.grpc_port}", "--model_name", "tiny",
                     "--max_new_tokens", "6", PROMPTS[1]])
    assert code == 0
    assert capsys.readouterr().out.strip() == in_process(causal_lm, PROMPTS[1:], 6)[0].strip()


def test_vision_export_takes_b64_images_over_rest(tiny_vision_export):
    causal_lm, path = tiny_vision_export
    image = png(36, 24, 5)[0]
    prompts = ["What is in <start_of_image>?", "No image"]
    expected = in_process(causal_lm, prompts, 5, images=[[image], []])
    with serve(model_base_path=os.path.dirname(path), model_name="vision", port=None, rest_api_port=0,
               file_system_poll_wait_seconds=0) as server:
        server.wait_until_ready()
        b64 = {"b64": base64.b64encode(image).decode()}
        body = {"instances": [{"prompt": prompts[0], "images": [b64], "max_new_tokens": 5},
                              {"prompt": prompts[1], "images": [{"b64": ""}], "max_new_tokens": 5}]}
        response = requests.post(f"http://localhost:{server.rest_port}/v1/models/vision:predict", json=body,
                                 timeout=300)
        assert response.status_code == 200, response.text
        assert [row["completion"] for row in response.json()["predictions"]] == expected
        bad = dict(body, instances=[{"prompt": "x", "images": [{"b64": base64.b64encode(b"GIF89a-broken").decode()}]}])
        response = requests.post(f"http://localhost:{server.rest_port}/v1/models/vision:predict", json=bad,
                                 timeout=300)
        assert response.status_code == 400 and response.json()["error"]
