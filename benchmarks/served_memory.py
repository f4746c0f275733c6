"""Where the served model's memory goes: the RSS of a fresh process at each stage of loading a real Gemma 3 270M
export as TF Serving's SavedModelBundle does (TensorFlow's session loader), then answering.

    .venv/bin/python benchmarks/served_memory.py [--model_path BASE/NAME/VERSION ...] [--score_tokens 2000]
        [--loader python c_api] [--trim] [--json_out FILE]

Exports the plain float32 model into `--work_dir` unless `--model_path` is given. Each version is measured in its
own interpreter for each `--loader`:
- `python`: the local server's loader (`tf.compat.v1.saved_model.loader`), with only what the local server loads
  (TensorFlow, and the op libraries the export needs: `serving.op_libraries`). Stages: those loaded, the MetaGraph
  parsed, the graph imported, the session made (its first run), the variables restored (the init op after).
- `c_api`: TensorFlow's C++ loader through its C API (`serving.c_api`), in a process without TensorFlow's Python:
  what tensorflow_model_server itself holds, as near as this machine shows it. Stages: TensorFlow's C libraries
  loaded, then the op libraries and the whole load (`TF_LoadSessionFromSavedModel`).
Then, for both, every warmup record (a stage after the first of each signature and row count), then a `score` of
`--score_tokens` response tokens (a request near the export's max_length). Each stage gives the RSS, its
anonymous part (the rest is mapped library and file pages) and the peak so far (VmHWM). Also: the graph's size
(nodes in its function library, bytes of saved_model.pb) and of variables/.
"""

import argparse
import ctypes
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.host import cpu, status_gib  # noqa: E402

GIB = 2**30


class Stages:
    """The memory of this process at each named stage: rows of RSS, its anonymous part and the peak so far."""

    def __init__(self, trim):
        self.trim, self.rows = trim, []

    def __call__(self, name):
        rss, anonymous, peak = (status_gib(field) for field in ("VmRSS", "RssAnon", "VmHWM"))
        row = {"stage": name, "rss_gib": rss, "anonymous_gib": anonymous, "peak_gib": peak}
        if self.trim:  # what the heap holds free goes back to the system; what is left is held
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            row["trimmed_gib"] = status_gib("VmRSS")
        self.rows.append(row)
        print(f"  {name:48s} RSS {rss:5.2f} GiB (anonymous {anonymous:5.2f}), peak {peak:5.2f}"
              + (f", trimmed {row['trimmed_gib']:5.2f}" if self.trim else ""), file=sys.stderr)


def measure(path, score_tokens, trim):
    """The stages of one version on TensorFlow's Python session loader, in this process (which must not have
    imported TensorFlow yet)."""
    stage = Stages(trim)
    stage("start")
    import tensorflow as tf
    from tensorflow.python.saved_model import loader_impl

    import serving.models  # noqa: F401  (the local server's modules, counted with TensorFlow)
    from serving.op_libraries import register_op_libraries
    register_op_libraries(path)
    stage("tensorflow and the export's op libraries loaded")

    loader = loader_impl.SavedModelLoader(path)
    meta_graph = loader.get_meta_graph_def_from_tags(["serve"])
    stage("MetaGraph parsed")
    session = tf.compat.v1.Session(graph=tf.Graph())
    with session.graph.as_default():
        saver, _ = loader.load_graph(session.graph, ["serve"])
        stage("graph imported")
        session.run(tf.constant(0))
        stage("session made")
        loader.restore_variables(session, saver)
        loader.run_init_ops(session, ["serve"])
        stage("variables restored")

    signatures = meta_graph.signature_def
    # Feeds made here, not by `session_check.signature_feeds`: gemma3_tf (Keras) is no module the local server loads.
    for name, signature_name, inputs in requests(path, score_tokens):
        signature = signatures[signature_name]
        feeds = {signature.inputs[alias].name: value for alias, value in inputs.items()}
        result = session.run({alias: info.name for alias, info in signature.outputs.items()}, feeds)
        if name:
            stage(name.format(**counts(result)))
    return stage.rows


def measure_c_api(job, trim):
    """The stages of one version on TensorFlow's C++ loader (`serving.c_api`), in this process, which never
    imports TensorFlow's Python. `job` (`c_api_job`): the version, its op libraries and its Session.runs."""
    stage = Stages(trim)
    stage("start")
    from serving.c_api import CSession, feeds_from_json, tensorflow_c_library
    tensorflow_c_library()
    stage("TensorFlow's C libraries loaded")
    session = CSession(job["export_dir"], job["op_libraries"])
    stage("op libraries, graph, session, variables, init op")
    for name, feeds, fetches in job["runs"]:
        result = session.run(feeds_from_json(feeds), fetches)
        if name:
            stage(name.format(**counts(result)))
    assert "tensorflow" not in sys.modules
    return stage.rows


def c_api_job(path, score_tokens):
    """What `measure_c_api` runs for the version at `path`, as JSON: the op libraries and the Session.runs of
    `requests`, made here, where TensorFlow's Python reads the SignatureDefs."""
    from gemma3_tf.export.session_check import signature_feeds
    from serving.c_api import feeds_to_json
    from serving.models import read_signature_defs
    from serving.op_libraries import needed_op_libraries

    signatures, runs = read_signature_defs(path), []
    for name, signature_name, inputs in requests(path, score_tokens):
        feeds, fetches = signature_feeds(signatures[signature_name], inputs)
        runs.append((name, feeds_to_json(feeds), fetches))
    return {"export_dir": path, "op_libraries": needed_op_libraries(path), "runs": runs}


def requests(path, score_tokens):
    """[(stage name or None, signature name, inputs)]: every warmup record of the version at `path` (a stage after
    the first of each signature and row count), then a `score` request of `score_tokens` response tokens."""
    import numpy as np
    import tensorflow as tf

    from serving.models import DEFAULT_SIGNATURE, read_warmup_requests

    listed, seen = [], set()
    for request in read_warmup_requests(path):
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        inputs = {alias: tf.make_ndarray(proto) for alias, proto in request.inputs.items()}
        rows = len(inputs["prompt"])
        first = (signature_name, rows) not in seen
        seen.add((signature_name, rows))
        listed.append((f"warmup: {signature_name}, {rows} row{'s' if rows > 1 else ''}" if first else None,
                       signature_name, inputs))
    words = " ".join(["the"] * score_tokens)  # " the" is one token
    listed.append(("score of {num_tokens} response tokens", "score",
                   {"prompt": np.array([b"Count:"]), "response": np.array([words.encode()])}))
    return listed


def counts(result):
    """The integer outputs of a Session.run (`num_tokens`), by alias, for a stage's name."""
    return {alias: int(value.reshape(-1)[0]) for alias, value in result.items() if value.dtype.kind == "i"}


def graph_size(path):
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as file:
        saved_model.ParseFromString(file.read())
    graph = saved_model.meta_graphs[0].graph_def
    variables = os.path.join(path, "variables")
    return {"function_nodes": sum(len(function.node_def) for function in graph.library.function),
            "saved_model_pb_mib": os.path.getsize(os.path.join(path, "saved_model.pb")) / 2**20,
            "variables_gib": sum(os.path.getsize(os.path.join(variables, name))
                                 for name in os.listdir(variables)) / GIB}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gemma3_270m_q4_k_m")
    parser.add_argument("--model_path", nargs="+", default=None, help="version directories; default: export")
    parser.add_argument("--work_dir", default="/tmp/gemma3_tf_memory_bench")
    parser.add_argument("--score_tokens", type=int, default=2000)
    parser.add_argument("--json_out", default=None)
    parser.add_argument("--trim", action="store_true",
                        help="after each stage, also the RSS once glibc's malloc_trim has handed back the free heap")
    parser.add_argument("--loader", nargs="+", default=["python"], choices=["python", "c_api"],
                        help="python: the local server's session loader; c_api: TensorFlow's C++ loader, as "
                             "tensorflow_model_server loads (each in its own process)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # measure one path in this process
    parser.add_argument("--c_api_child", action="store_true", help=argparse.SUPPRESS)  # the job on stdin
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.score_tokens, args.trim)))
        return
    if args.c_api_child:
        print(json.dumps(measure_c_api(json.load(sys.stdin), args.trim)))
        return
    paths = args.model_path
    if paths is None:
        base = os.path.join(args.work_dir, "gemma3_plain")
        paths = [os.path.join(base, "1")]
        if not os.path.exists(os.path.join(paths[0], "saved_model.pb")):
            subprocess.run([sys.executable, "-m", "gemma3_tf.cli", "export", "--preset", args.preset,
                            "--model_base_path", base, "--version", "1"], check=True)
    results = []
    for path in paths:
        size = graph_size(path)
        for loader in args.loader:
            print(f"{path} ({loader} loader)", file=sys.stderr)
            flags = ["--trim"] if args.trim else []
            if loader == "python":
                command, job = ["--child", path, "--score_tokens", str(args.score_tokens)], None
            else:
                command, job = ["--c_api_child"], json.dumps(c_api_job(path, args.score_tokens))
            child = subprocess.run([sys.executable, os.path.abspath(__file__), *command, *flags], check=True,
                                   input=job, stdout=subprocess.PIPE, text=True)
            results += [{"model_path": path, "loader": loader, **size, **row}
                        for row in json.loads(child.stdout.splitlines()[-1])]
        print(f"  graph: {size['function_nodes']} function nodes, saved_model.pb {size['saved_model_pb_mib']:.1f} "
              f"MiB; variables {size['variables_gib']:.2f} GiB", file=sys.stderr)
    if args.json_out:
        with open(args.json_out, "w") as file:
            json.dump({"command": " ".join([os.path.relpath(sys.executable), *sys.argv]), "cpu": cpu(),
                       "score_tokens": args.score_tokens, "results": results}, file, indent=2)


if __name__ == "__main__":
    main()
