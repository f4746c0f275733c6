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


def build_parser():
    parser = argparse.ArgumentParser(prog="gemma3-tf", description="Gemma 3 on TensorFlow.")
    parser.add_argument("--version", action="version", version=f"gemma3-tf {__version__}")
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
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
