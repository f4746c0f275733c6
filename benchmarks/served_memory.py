"""Where the served model's memory goes: the RSS of a fresh process at each stage of loading a real Gemma 3 270M
export as TF Serving's SavedModelBundle does (TensorFlow's session loader), then answering.

    .venv/bin/python benchmarks/served_memory.py [--model_path BASE/NAME/VERSION ...] [--score_tokens 2000]
        [--trim] [--json_out FILE]

Exports the plain float32 model into `--work_dir` unless `--model_path` is given. Each version is measured in its
own interpreter, which loads only what the local server loads (TensorFlow, and the op libraries the export needs:
`serving.op_libraries`). Stages: those loaded, the MetaGraph parsed, the graph imported, the session made (its
first run), the variables restored (the init op after), then each warmup record, then a `score` request of
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


def measure(path, score_tokens, trim):
    """The stages of one version, in this process (which must not have imported TensorFlow yet)."""
    stages = []

    def stage(name):
        rss, anonymous, peak = (status_gib(field) for field in ("VmRSS", "RssAnon", "VmHWM"))
        row = {"stage": name, "rss_gib": rss, "anonymous_gib": anonymous, "peak_gib": peak}
        if trim:  # what the heap holds free goes back to the system; what is left is held
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            row["trimmed_gib"] = status_gib("VmRSS")
        stages.append(row)
        print(f"  {name:48s} RSS {rss:5.2f} GiB (anonymous {anonymous:5.2f}), peak {peak:5.2f}"
              + (f", trimmed {row['trimmed_gib']:5.2f}" if trim else ""), file=sys.stderr)

    stage("start")
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.saved_model import loader_impl

    from serving.models import DEFAULT_SIGNATURE, read_warmup_requests
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

    def run(signature_name, inputs):
        signature = signatures[signature_name]
        feeds = {signature.inputs[alias].name: value for alias, value in inputs.items()}
        return session.run({alias: info.name for alias, info in signature.outputs.items()}, feeds)

    seen = set()
    for request in read_warmup_requests(path):
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        inputs = {alias: tf.make_ndarray(proto) for alias, proto in request.inputs.items()}
        run(name, inputs)
        rows = len(inputs["prompt"])
        if (name, rows) not in seen:
            seen.add((name, rows))
            stage(f"warmup: {name}, {rows} row{'s' if rows > 1 else ''}")
    stage("warmup done")
    words = " ".join(["the"] * score_tokens)  # " the" is one token
    scored = run("score", {"prompt": np.array([b"Count:"]), "response": np.array([words.encode()])})
    stage(f"score of {int(scored['num_tokens'][0])} response tokens")
    return stages


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
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # measure one path in this process
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.score_tokens, args.trim)))
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
        print(path, file=sys.stderr)
        child = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", path, "--score_tokens",
                                str(args.score_tokens)] + (["--trim"] if args.trim else []), check=True,
                               stdout=subprocess.PIPE, text=True)
        size = graph_size(path)
        print(f"  graph: {size['function_nodes']} function nodes, saved_model.pb {size['saved_model_pb_mib']:.1f} "
              f"MiB; variables {size['variables_gib']:.2f} GiB", file=sys.stderr)
        results += [{"model_path": path, **size, **row} for row in json.loads(child.stdout.splitlines()[-1])]
    if args.json_out:
        with open(args.json_out, "w") as file:
            json.dump({"command": " ".join([os.path.relpath(sys.executable), *sys.argv]), "cpu": cpu(),
                       "score_tokens": args.score_tokens, "results": results}, file, indent=2)


if __name__ == "__main__":
    main()
