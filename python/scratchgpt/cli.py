"""The `scratchgpt` command. Each subcommand lives in its own module, which exposes
`register(subparsers)`: it adds its parser and sets `func` (called with the parsed args,
returning an exit code).

Every expected failure ends the command with one line on stderr,

    scratchgpt <command>: error: <what> (<which file or argument>, <what was expected>)

and exit status 2 for a usage error (a bad argument), 130 / 143 when interrupted by SIGINT /
SIGTERM, 1 otherwise (a missing, unreadable or corrupt file, not enough memory, a full disk).
`--debug` (or SCRATCHGPT_DEBUG=1) prints the traceback as well. Anything else is a bug and
keeps its traceback.
"""
import argparse
import importlib
import json
import os
import re
import signal
import sys
import threading
import traceback

from .errors import Interrupted, ScratchError, describe_os_error, signal_name

# module path for each subcommand, in the order `--help` lists them
COMMANDS = (
    "scratchgpt.info",
    "scratchgpt.gradcheck",
    "scratchgpt.exercise",
    "scratchgpt.train",
    "scratchgpt.sample",
    "scratchgpt.finetune",
    "scratchgpt.eval",
    "scratchgpt.bench",
    "scratchgpt.scaling",
    "scratchgpt.compress",
)


# ------------------------------------------------------------------------- argument types
def _number_type(kind, name, expected, ok):
    def parse(text):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"invalid value {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"invalid value {text!r}")
        return value
    parse.__name__ = name
    parse.expected = expected
    return parse


positive_int = _number_type(int, "positive_int", "an integer >= 1", lambda v: v >= 1)
nonneg_int = _number_type(int, "nonneg_int", "an integer >= 0", lambda v: v >= 0)
positive_float = _number_type(float, "positive_float", "a number > 0", lambda v: v > 0)
nonneg_float = _number_type(float, "nonneg_float", "a number >= 0", lambda v: v >= 0)
open_fraction = _number_type(float, "open_fraction", "a number between 0 and 1 (exclusive)",
                             lambda v: 0.0 < v < 1.0)
probability = _number_type(float, "probability", "a probability in [0, 1)",
                           lambda v: 0.0 <= v < 1.0)
top_p_type = _number_type(float, "top_p", "a number in (0, 1]", lambda v: 0.0 < v <= 1.0)

_PLAIN_TYPES = {int: "an integer", float: "a number"}


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors as one line in the house format (exit 2); an unknown flag
    is reported by the subcommand it was given to."""

    commands = None          # the subcommands' parsers, on the top-level parser

    def parse_args(self, args=None, namespace=None):
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            command = self.commands.get(getattr(parsed, "command", None)) if self.commands else None
            (command or self).error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {self.describe(message)}\n")

    def _action(self, option):
        for action in self._actions:
            if option in action.option_strings or option in (action.dest, action.metavar):
                return action
        return None

    def _expected(self, action):
        if action is None:
            return f"see {self.prog} --help"
        if action.choices is not None:
            return "one of " + ", ".join(map(str, action.choices))
        expected = getattr(action.type, "expected", None) or _PLAIN_TYPES.get(action.type)
        if expected:
            return expected
        # the help without its asides: "run folder (its newest ...), checkpoint folder, or ..."
        return re.sub(r"\s*\([^()]*\)", "", action.help or "").strip() or "a value"

    def describe(self, message):
        m = re.match(r"argument (\S+): (.*)$", message, re.S)
        if m:
            option = m.group(1).split("/")[-1]
            action = self._action(option)
            rest = m.group(2)
            what = rest
            choice = re.match(r"invalid choice: (.*?) \(choose from", rest)
            bad = re.match(r"invalid \w+ value: (.*)$", rest)
            if choice:
                what = f"invalid choice {choice.group(1)}"
            elif bad:
                what = f"invalid value {bad.group(1)}"
            return ScratchError(what, option, self._expected(action)).line()
        m = re.match(r"the following arguments are required: (.*)$", message)
        if m:
            names = m.group(1)
            action = self._action(names.split(", ")[0])
            return ScratchError("missing a required argument", names,
                                self._expected(action)).line()
        return ScratchError(message, None, f"see {self.prog} --help").line()


def build_parser():
    parser = ArgumentParser(
        prog="scratchgpt", description="A GPT built from scratch: hand-derived gradients, "
        "a NumPy reference and hand-written CUDA kernels.",
        epilog="Errors are one line on stderr (exit 2: a bad argument, 1: anything else, "
        "130/143: interrupted); --debug or SCRATCHGPT_DEBUG=1 adds the traceback.")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an error, not only its one line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        importlib.import_module(module).register(sub)
    parser.commands = sub.choices
    for command in sub.choices.values():    # `scratchgpt train ... --debug` works too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="print the traceback of an error, not only its one line")
    return parser


# ------------------------------------------------------------------------- failures
def explain(e):
    """(one line, exit status) for an expected failure; None for a bug."""
    if isinstance(e, ScratchError):
        return e.line(), e.exit_code
    if isinstance(e, KeyboardInterrupt):
        return ScratchError("interrupted", "SIGINT", "stopped before finishing").line(), 130
    if isinstance(e, MemoryError):
        return ScratchError(f"out of memory ({e})" if str(e) else "out of memory",
                            "--batch-size / --preset", "a smaller batch or preset (the run "
                            "needed more than its memory estimate: please report it)").line(), 1
    if isinstance(e, OSError):
        line = describe_os_error(e)
        return (line, 1) if line else None
    if isinstance(e, SystemExit) and isinstance(e.code, str):     # raise SystemExit("msg")
        msg = re.sub(r"^[\w -]+: ", "", e.code.strip())
        return msg, 2
    return None


class _TerminateAsException:
    """SIGTERM raises Interrupted (exit 143) in the main thread, so a command ends through its
    cleanup and the same one-line report as Ctrl-C; the previous handler comes back after."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise Interrupted("terminated", signal_name(signum), "stopped before finishing",
                          signum=signum)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


def debug_wanted(args):
    return bool(getattr(args, "debug", False)) or \
        os.environ.get("SCRATCHGPT_DEBUG", "") not in ("", "0")


def main(argv=None):
    args = build_parser().parse_args(argv)
    prog = f"scratchgpt {args.command}"
    try:
        with _TerminateAsException():
            return args.func(args) or 0
    except BrokenPipeError:
        # the reader went away (`scratchgpt sample ... | head`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except BaseException as e:        # noqa: B902 -- KeyboardInterrupt and SystemExit too
        explained = explain(e)
        if explained is None:
            raise
        line, code = explained
        if debug_wanted(args):
            traceback.print_exc()
        sys.stdout.flush()
        print(f"{prog}: error: {line}", file=sys.stderr, flush=True)
        if getattr(args, "json", False):
            print(json.dumps({"error": line, "exit_code": code}), flush=True)
        return code


if __name__ == "__main__":
    sys.exit(main())
