"""The `scratchgpt` command. Each subcommand lives in its own module, which exposes
`register(subparsers)`: it adds its parser and sets `func` (called with the parsed args,
returning an exit code)."""
import argparse
import importlib
import sys

# module path for each subcommand, in the order `--help` lists them
COMMANDS = (
    "scratchgpt.info",
    "scratchgpt.gradcheck",
    "scratchgpt.train",
    "scratchgpt.sample",
    "scratchgpt.finetune",
    "scratchgpt.bench",
)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="scratchgpt", description="A GPT built from scratch: hand-derived gradients, "
        "a NumPy reference and hand-written CUDA kernels.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
