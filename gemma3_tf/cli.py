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


def build_parser():
    parser = argparse.ArgumentParser(prog="gemma3-tf", description="Gemma 3 on TensorFlow.")
    parser.add_argument("--version", action="version", version=f"gemma3-tf {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("presets", help="list the built-in presets").set_defaults(run=_presets)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
