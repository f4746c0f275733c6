"""`gemma3-tf`: the command line. Thin: parse flags, call the library."""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: keep the terminal for results

from gemma3_tf import __version__  # noqa: E402


def _presets(args):
    from gemma3_tf.presets import PRESETS

    print(f"{'preset':<26} {'parameters':>16}  {'vision':<6}  kaggle handle")
    for name, preset in PRESETS.items():
        vision = "yes" if preset["vision"] else "no"
        print(f"{name:<26} {preset['params']:>16,}  {vision:<6}  {preset['kaggle_handle']}")


def _convert(args):
    import gemma3_tf
    from gemma3_tf.checkpoints import huggingface, open_checkpoint

    checkpoint = open_checkpoint(args.source)
    backbone = gemma3_tf.Gemma3Backbone.from_preset(checkpoint, dtype=args.dtype)
    try:
        tokenizer = gemma3_tf.Gemma3Tokenizer.from_preset(checkpoint)
    except FileNotFoundError as error:
        tokenizer = None
        print(f"warning: no tokenizer written ({error})", file=sys.stderr)
    if args.format == "hf":
        huggingface.save(backbone, args.dest, tokenizer, max_shard_size=int(args.max_shard_size * 1024**3))
    else:
        backbone.save_to_preset(args.dest, max_shard_size=args.max_shard_size)
        if tokenizer is not None:
            tokenizer.save_to_preset(args.dest)
    print(f"{args.source} ({checkpoint.format}) -> {args.dest} ({args.format}): "
          f"{backbone.count_params():,} parameters, {backbone.dtype_policy.variable_dtype}")


def _generate(args):
    import time

    import numpy as np
    import tensorflow as tf

    import gemma3_tf
    from gemma3_tf import samplers
    from gemma3_tf.preprocessing import chat_prompt, images_in_front

    causal_lm = gemma3_tf.Gemma3CausalLM.from_preset(args.preset, dtype=args.dtype)
    if causal_lm.preprocessor is None:
        raise SystemExit(f"error: {args.preset} has no tokenizer, so it cannot take a text prompt")
    sampler = {"greedy": samplers.GreedySampler,
               "random": lambda: samplers.RandomSampler(args.temperature, args.seed),
               "top_k": lambda: samplers.TopKSampler(args.top_k, args.temperature, args.seed),
               "top_p": lambda: samplers.TopPSampler(args.top_p, None, args.temperature, args.seed)}[args.sampler]()
    causal_lm.compile(sampler=sampler)
    prompt = chat_prompt([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
    images = []
    for path in args.image:
        with tf.io.gfile.GFile(path, "rb") as file:  # gs://... too
            images.append(file.read())
    prompt = images_in_front(prompt, len(images))
    inputs = {"prompts": [prompt], "images": [images]} if images else [prompt]
    features = causal_lm.preprocessor.generate_preprocess(inputs, args.max_length)
    features = {key: np.asarray(value) for key, value in features.items()}
    prompt_length = int(features["padding_mask"].sum())
    count = 0

    def show(piece):
        nonlocal count
        count += 1
        print(piece[0], end="", flush=True)

    start = time.perf_counter()
    if args.stream:
        causal_lm.generate(inputs, max_length=args.max_length, seed=args.seed, stream=show)
        print()
    else:
        new_ids = causal_lm.generate(features, max_length=args.max_length, seed=args.seed)
        count = int((new_ids[0] != 0).sum())
        print(causal_lm.preprocessor.generate_postprocess(new_ids)[0])
    seconds = time.perf_counter() - start
    print(f"[{count} new tokens after {prompt_length} prompt tokens in {seconds:.2f} s: "
          f"{count / seconds:.1f} tokens/s, compile included on the first call]", file=sys.stderr)


def build_parser():
    parser = argparse.ArgumentParser(prog="gemma3-tf", description="Gemma 3 on TensorFlow.")
    parser.add_argument("--version", action="version", version=f"gemma3-tf {__version__}")
    parser.add_argument("--verbose", action="store_true", help="a failing command shows its traceback")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("presets", help="list the built-in presets").set_defaults(run=_presets)
    convert = commands.add_parser(
        "convert", help="convert a checkpoint (keras-hub preset, transformers dir, .gguf, hf://, kaggle://, "
                        "preset name) into a keras-hub preset or a transformers directory")
    convert.add_argument("source", help="anything `Gemma3Backbone.from_preset` accepts")
    convert.add_argument("dest", help="output directory")
    convert.add_argument("--format", choices=["keras", "hf"], default="keras",
                         help="keras: keras-hub preset (default); hf: safetensors + config.json for transformers")
    convert.add_argument("--dtype", default=None, help="cast the weights, e.g. bfloat16 (default: as stored, "
                                                      "float32 for GGUF)")
    convert.add_argument("--max_shard_size", type=float, default=5.0, help="GB per weights file (default 5)")
    convert.set_defaults(run=_convert)
    generate = commands.add_parser("generate", help="generate text from a prompt (and images)")
    generate.add_argument("prompt")
    generate.add_argument("--preset", default="gemma3_270m_q4_k_m",
                          help="anything `from_preset` accepts (default: the real 270M from PyPI)")
    generate.add_argument("--image", action="append", default=[], help="an image file; repeat for several")
    generate.add_argument("--max_length", "--max-length", type=int, default=128, help="prompt + new tokens")
    generate.add_argument("--sampler", choices=["greedy", "random", "top_k", "top_p"], default="greedy")
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--top_k", "--top-k", type=int, default=40)
    generate.add_argument("--top_p", "--top-p", type=float, default=0.9)
    generate.add_argument("--seed", type=int, default=None)
    generate.add_argument("--chat", action="store_true", help="wrap the prompt in Gemma's chat turns")
    generate.add_argument("--dtype", default=None, help="e.g. bfloat16")
    generate.add_argument("--stream", action="store_true",
                          help="print each token as it is generated (one compiled call per token)")
    generate.set_defaults(run=_generate)
    _add_train_parser(commands)
    _add_plan_parser(commands)
    _add_export_parser(commands)
    for name, module in _JOBS.items():  # listed in --help; `main` hands their flags over
        commands.add_parser(name, help=f"run {module} (see `gemma3-tf {name} --help`)", add_help=False)
    return parser


def _export(args):
    import gemma3_tf
    from gemma3_tf import checkpoints
    from gemma3_tf.export import export_model
    from gemma3_tf.quantization import quantize_weights

    checkpoint, overrides = checkpoints.open_checkpoint(args.preset), {}
    if args.max_images is not None:
        if checkpoint.backbone_config().get("vision_encoder") is None:
            raise SystemExit(f"error: --max_images is for models with a vision encoder; {args.preset} has none")
        overrides["preprocessor"] = gemma3_tf.Gemma3CausalLMPreprocessor.from_preset(
            checkpoint, max_images_per_prompt=args.max_images)
    causal_lm = gemma3_tf.Gemma3CausalLM.from_preset(checkpoint, dtype=args.dtype, **overrides)
    if causal_lm.preprocessor is None:
        raise SystemExit(f"error: {args.preset} has no tokenizer; an export needs one (it runs in the graph)")
    if args.quantize:
        quantize_weights(causal_lm.backbone, args.quantize)
    warmup_shapes = {name: getattr(args, name) for name in ("batch_sizes", "warmup_prompt_tokens")
                     if getattr(args, name) is not None}
    export_model(causal_lm, args.model_base_path, version=args.version, max_length=args.max_length,
                 max_rows=args.max_rows, max_prompt_bytes=args.max_prompt_bytes, max_image_bytes=args.max_image_bytes,
                 max_image_pixels=args.max_image_pixels,
                 jit_compile=args.jit_compile, warmup=args.warmup, **warmup_shapes)


def _add_export_parser(commands):
    from gemma3_tf.quantization import WEIGHT_OPTIONS
    from gemma3_tf.request_limits import PROMPT_BYTES_PER_TOKEN, ServingLimits

    export = commands.add_parser("export", help="write a SavedModel version for TF Serving: BASE/NAME/VERSION/")
    export.add_argument("--preset", default="gemma3_270m_q4_k_m",
                        help="anything `from_preset` accepts, e.g. a `gemma3-tf train` final/ directory")
    export.add_argument("--model_base_path", required=True,
                        help="BASE/NAME: NAME is the model name clients ask for; BASE/models.config lists them all")
    export.add_argument("--version", type=int, default=None, help="default: one above the highest present")
    export.add_argument("--dtype", default=None, help="weights dtype in the SavedModel, e.g. bfloat16")
    export.add_argument("--quantize", choices=WEIGHT_OPTIONS, default=None,
                        help="Keras int8 weights with per-channel scales (the logits and feedforward gates also "
                             "quantize their inputs per row); fast with --jit_compile")
    export.add_argument("--max_length", type=int, default=2048, help="most tokens per row: prompt + new tokens")
    export.add_argument("--max_images", type=int, default=None, help="images per prompt (vision models)")
    export.add_argument("--max_rows", type=int, default=ServingLimits.max_rows, help="most prompts per request")
    export.add_argument("--max_prompt_bytes", type=int, default=None,
                        help="most bytes per prompt, refused before tokenizing (default: as many as --max_length "
                             f"tokens can span, {PROMPT_BYTES_PER_TOKEN} per token)")
    export.add_argument("--max_image_bytes", type=int, default=ServingLimits.max_image_bytes,
                        help="most bytes per encoded image")
    export.add_argument("--max_image_pixels", type=int, default=ServingLimits.max_image_pixels,
                        help="most pixels per image, read from its header before decoding")
    export.add_argument("--jit_compile", action=argparse.BooleanOptionalAction, default=False,
                        help="XLA for the decode loop: faster; tensorflow_model_server on CPU then needs "
                             "--xla_cpu_compilation_enabled=true")
    export.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                        help="write assets.extra/tf_serving_warmup_requests")
    export.add_argument("--batch_sizes", type=int, nargs="+", default=None,
                        help="TF Serving's allowed_batch_sizes (BASE/batching_parameters.txt), each warmed up "
                             "(default: 1 2 4 8)")
    export.add_argument("--warmup_prompt_tokens", type=int, default=None,
                        help="with --jit_compile: warm up each prompt bucket up to this many tokens (default: 64)")
    export.set_defaults(run=_export)


def _train(args):
    from gemma3_tf import training

    training.train(
        args.preset, args.train_data, args.output_dir, steps=args.steps, epochs=args.epochs,
        global_batch_size=args.global_batch_size, eval_data=args.eval_data, strategy=args.strategy, tpu=args.tpu,
        dtype=args.dtype, lora_rank=args.lora_rank, remat=args.remat, merge_lora=not args.keep_lora,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_steps, decay=args.decay,
        weight_decay=args.weight_decay, clipnorm=args.clipnorm, checkpoint_every=args.checkpoint_every,
        log_every=args.log_every, jit_compile=args.jit_compile, seed=args.seed,
        skip_image_examples=args.skip_image_examples)


def _add_train_parser(commands):
    train = commands.add_parser("train", help="fine-tune a preset on TFRecords from `gemma3-tf preprocess`")
    train.add_argument("--preset", default="gemma3_270m_q4_k_m", help="anything `from_preset` accepts")
    train.add_argument("--train_data", required=True, help="TFRecord glob, local or gs://")
    train.add_argument("--eval_data", default=None, help="TFRecord glob for a final evaluation")
    train.add_argument("--output_dir", required=True, help="checkpoints, logs/, final/ and summary.json")
    length = train.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=int, help="total optimizer steps (a rerun resumes up to this)")
    length.add_argument("--epochs", type=int, help="passes over the data (steps from the example count)")
    train.add_argument("--global_batch_size", type=int, default=8)
    train.add_argument("--learning_rate", type=float, default=1e-4)
    train.add_argument("--warmup_steps", type=int, default=0)
    train.add_argument("--decay", choices=["cosine", "linear", "constant"], default="cosine")
    train.add_argument("--weight_decay", type=float, default=0.01, help="AdamW's, not on norms or embeddings")
    train.add_argument("--clipnorm", type=float, default=1.0, help="global gradient norm clip (0: none)")
    train.add_argument("--lora_rank", type=int, default=0, help="0: full fine-tune")
    train.add_argument("--keep_lora", action="store_true",
                       help="final/ keeps the adapters apart (lora_adapters.h5) instead of merging them")
    train.add_argument("--dtype", choices=["float32", "mixed_bfloat16"], default=None,
                       help="mixed_bfloat16: float32 weights, bfloat16 compute")
    train.add_argument("--jit_compile", action=argparse.BooleanOptionalAction, default=True,
                       help="XLA-compile the train step (turn off for MirroredStrategy on CPU)")
    train.add_argument("--remat", action="store_true", help="recompute decoder blocks in the backward pass")
    train.add_argument("--strategy", choices=["auto", "tpu", "mirrored", "default"], default="auto")
    train.add_argument("--tpu", default=None, help="TPU name, `local` on a TPU VM, or grpc://IP:8470")
    train.add_argument("--checkpoint_every", type=int, default=100)
    train.add_argument("--log_every", type=int, default=10)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--skip_image_examples", action="store_true",
                       help="a text-only preset on data made for a vision model: train on the examples without images")
    train.set_defaults(run=_train)


def _plan(args):
    from gemma3_tf.training import planner

    memory = planner.plan(args.preset, args.global_batch_size, args.sequence_length, args.replicas, args.lora_rank,
                          args.dtype, args.remat)
    print(memory.table(args.device))
    return 0 if args.device is None or memory.fits(args.device) else 1


def _add_plan_parser(commands):
    from gemma3_tf.training.planner import DEVICES

    plan = commands.add_parser("plan", help="memory per replica of a training job, and whether it fits a device")
    plan.add_argument("--preset", default="gemma3_270m", help="a preset name or any checkpoint (weights not read)")
    plan.add_argument("--global_batch_size", type=int, default=8)
    plan.add_argument("--sequence_length", type=int, default=512)
    plan.add_argument("--replicas", type=int, default=1, help="data-parallel replicas (TPU cores/chips, GPUs)")
    plan.add_argument("--lora_rank", type=int, default=0)
    plan.add_argument("--dtype", choices=["float32", "bfloat16", "mixed_bfloat16"], default="float32")
    plan.add_argument("--remat", action="store_true")
    plan.add_argument("--device", choices=sorted(DEVICES), default=None, help="exit status 1 if it does not fit")
    plan.set_defaults(run=_plan)


# Commands that are jobs of their own, with their own flags (Beam pipeline options included).
_JOBS = {"preprocess": "pipelines.preprocess", "serve": "serving.server", "query": "serving.client",
         "batch-infer": "pipelines.batch_inference"}


def _user_errors():
    """What a user's mistake raises (a missing file, an unknown preset, a bad value, data for another model), as
    opposed to a bug, whose traceback stays."""
    errors = (ValueError, OSError)
    if "tensorflow" in sys.modules:  # loaded by the command by now, if it needed it
        import tensorflow as tf

        errors += (tf.errors.NotFoundError, tf.errors.InvalidArgumentError, tf.errors.PermissionDeniedError)
    return errors


def main(argv=None):
    """Runs a command. A user's mistake prints one line, `gemma3-tf COMMAND: error: ...`, and returns 2 (with
    `--verbose`, anywhere on the line, its traceback instead)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = "--verbose" in argv
    argv = [arg for arg in argv if arg != "--verbose"]
    command = argv[0] if argv and not argv[0].startswith("-") else ""
    try:
        if command in _JOBS:
            import importlib

            status = importlib.import_module(_JOBS[command]).main(argv[1:])
            return status if isinstance(status, int) else 0  # the query command's exit status; jobs return results
        args = build_parser().parse_args(argv)
        return args.run(args)
    except SystemExit as stop:  # argparse's own (already printed), or a command's `SystemExit("error: ...")`
        if not isinstance(stop.code, str) or verbose:
            raise
        message = stop.code
    except Exception as error:
        if verbose or not isinstance(error, _user_errors()):
            raise
        text = getattr(error, "message", None) or str(error)  # a tf.errors.OpError's own message
        message = f"error: {' '.join(text.split()) or type(error).__name__}"
    message = message if message.startswith("error: ") else f"error: {message}"
    print(f"gemma3-tf{' ' + command if command else ''}: {message} (--verbose shows the traceback)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
