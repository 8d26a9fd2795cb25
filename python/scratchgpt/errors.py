"""Expected failures: what went wrong, where, and what was expected, in one line.

    ScratchError("not a safetensors file", "runs/a/ckpt_000050/model.safetensors",
                 "a checkpoint written by scratchgpt train")
    -> "not a safetensors file (runs/a/ckpt_000050/model.safetensors, a checkpoint written by
        scratchgpt train)"

The CLI prints one of these as `scratchgpt <command>: error: <line>` on stderr and exits with
its exit_code: 2 for a usage error (a bad argument), 1 for anything else (a missing or bad
file, not enough memory), 130 / 143 when interrupted by SIGINT / SIGTERM. Anything else that
escapes a command is a bug and keeps its traceback.

Each class also derives from the built-in exception a caller would catch (ValueError,
FileNotFoundError, MemoryError), so library code can keep catching those.
"""
import errno
import os
import signal


class ScratchError(Exception):
    """An expected failure of a command, printed as one line."""

    exit_code = 1

    def __init__(self, what, where=None, expected=None):
        self.what, self.where, self.expected = str(what), where, expected
        super().__init__(self.line())
        self.args = (self.line(),)

    def line(self):
        detail = ", ".join(str(p) for p in (self.where, self.expected) if p not in (None, ""))
        return f"{self.what} ({detail})" if detail else self.what

    def __str__(self):
        return self.line()

    def __reduce__(self):               # picklable (multiprocessing, pytest-xdist)
        return (type(self), (self.what, self.where, self.expected))


class UsageError(ScratchError, ValueError):
    """A bad command-line argument, or arguments that do not fit together (exit 2)."""

    exit_code = 2


class BadFileError(ScratchError, ValueError):
    """A file that exists but cannot be used: corrupt, truncated, of another format or of
    another model."""


class MissingFileError(ScratchError, FileNotFoundError):
    """A file or folder that is not there, or holds nothing usable."""

    def __new__(cls, *args, **kwargs):
        return FileNotFoundError.__new__(cls)   # not OSError's (errno, strerror, filename)


class NotEnoughMemory(ScratchError, MemoryError):
    """The memory estimate of a run exceeds what this machine has available."""


class Interrupted(ScratchError):
    """SIGINT (exit 130) or SIGTERM (exit 143)."""

    def __init__(self, what, where=None, expected=None, signum=signal.SIGINT):
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        super().__init__(what, where, expected)

    def __reduce__(self):
        return (_interrupted, (self.what, self.where, self.expected, self.signum))


def _interrupted(what, where, expected, signum):
    return Interrupted(what, where, expected, signum=signum)


def signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# ---------------------------------------------------------------------- OS errors
# errors of the machine or of the user's files, not of the program: one line, exit 1
_OS_EXPECTED = {
    errno.ENOENT: "an existing file or folder",
    errno.ENOTDIR: "a folder",
    errno.EISDIR: "a file, not a folder",
    errno.EACCES: "read and write permission",
    errno.EPERM: "read and write permission",
    errno.EROFS: "a writable file system",
    errno.ENOSPC: "free disk space",
    errno.EDQUOT: "free disk quota",
    errno.EFBIG: "a file size the system allows (ulimit -f)",
    errno.EIO: "a readable disk",
    errno.ENAMETOOLONG: "a shorter path",
    errno.EMFILE: "fewer open files (ulimit -n)",
}


def describe_os_error(e):
    """The one line for an OSError of the machine or the user's files, or None when the error
    is not one of those (a bug: keep its traceback)."""
    if e.errno not in _OS_EXPECTED:
        return None
    what = e.strerror or os.strerror(e.errno)
    where = e.filename if e.filename is not None else None
    if e.filename2 is not None:
        where = f"{e.filename} -> {e.filename2}"
    return ScratchError(what[0].lower() + what[1:], where, _OS_EXPECTED[e.errno]).line()


def is_expected_os_error(e):
    return isinstance(e, OSError) and e.errno in _OS_EXPECTED
