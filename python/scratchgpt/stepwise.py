"""Every step of a derivation, recorded while the reference runs.

The derivations in docs/gradients/OP.md number their steps `(1)`, `(2)`, ... and the NumPy
reference carries the same numbers as comments on the statements that compute them
(`dx = ...   # (8)`). `Recorder` uses those comments as the contract: it parses a module's
source, finds each statement whose comment holds a marker `(n)`, and while the module's
`forward` / `backward` run (under `sys.settrace`) takes a copy of the value that statement
assigned, as soon as it has executed. Nothing in the reference is written for the recorder,
so the ops run at full speed everywhere else, and a student's own file (`scratchgpt exercise`)
is recorded by the same rule: keep the `# (n)` comment on the statement that computes step n.

What is recorded for a marked statement:
    name = ...  /  name op= ...        the array `name` (a copy, taken after the statement)
    name, cache = ...                  the first name (the rest is bookkeeping, e.g. a cache)
    a[:, :, 0] = ...                   that constant slice (`a[:, :, 0]`)
    a[ids] = ...  /  a[ids] -= ...     the whole array `a` (the slice depends on variables)
    return ...                         the returned value
"""
import ast
import io
import re
import sys
import tokenize
from dataclasses import dataclass

import numpy as np

MARKER = re.compile(r"\((\d+)\)")
SIMPLE_STATEMENTS = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.Expr)


@dataclass(frozen=True)
class Step:
    marker: int
    function: str        # "forward" or "backward" (or any traced function's name)
    first_line: int
    last_line: int
    target: str | None   # expression evaluated after the statement; None: the returned value
    source: str          # the statement, as written
    note: str            # the comment after the marker


def _comment_markers(source):
    """line -> (marker, rest of the comment) for every comment that opens with `(n)`."""
    found = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            m = MARKER.match(tok.string.lstrip("#").strip())
            if m:
                found[tok.start[0]] = (int(m.group(1)), tok.string.lstrip("#").strip()[m.end():].strip())
    return found


def _static_slice(node):
    """True when a subscript's index holds no variables (e.g. `[:, :, 0]`)."""
    return not any(isinstance(n, ast.Name) for n in ast.walk(node.slice))


def statement_target(stmt):
    """The expression a marked statement's value is read from (None: the returned value)."""
    if isinstance(stmt, ast.Return):
        return None
    target = (stmt.targets[0] if isinstance(stmt, ast.Assign) else
              getattr(stmt, "target", None))
    if target is None:                       # a bare expression (an in-place call): its value
        return None
    if isinstance(target, ast.Tuple):        # `y, cache = ...`: the step is its first name
        target = target.elts[0]
    while isinstance(target, ast.Subscript) and not _static_slice(target):
        target = target.value
    return ast.unparse(target)


def marked_steps(source, functions=("forward", "backward")):
    """The marked statements of the named top-level functions of a module's source, in order.
    Raises ValueError when one marker number is used twice (the derivation would be ambiguous)."""
    tree = ast.parse(source)
    markers = _comment_markers(source)
    lines = source.splitlines()
    steps, seen = [], {}
    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef) or fn.name not in functions:
            continue
        for stmt in ast.walk(fn):
            if not isinstance(stmt, SIMPLE_STATEMENTS):
                continue
            for line in range(stmt.lineno, stmt.end_lineno + 1):
                if line in markers:
                    n, note = markers[line]
                    if n in seen and seen[n] != (fn.name, stmt.lineno):
                        raise ValueError(f"marker ({n}) is used twice (lines {seen[n][1]} and "
                                         f"{stmt.lineno})")
                    seen[n] = (fn.name, stmt.lineno)
                    steps.append(Step(n, fn.name, stmt.lineno, stmt.end_lineno, statement_target(stmt),
                                      "\n".join(lines[stmt.lineno - 1:stmt.end_lineno]).strip(),
                                      note))
                    break
    return sorted(steps, key=lambda s: s.marker)


def _copy(value):
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, tuple):
        return tuple(_copy(v) for v in value)
    return value


class Recorder:
    """Context manager: while active, records the marked steps of `module`'s forward/backward.

    `values` maps marker -> the value of its last execution (a copy); `history` lists every
    execution as (marker, value), in order (a model calls an op once per layer). A statement
    that raises records nothing."""

    def __init__(self, module, source=None, functions=("forward", "backward")):
        import inspect
        source = inspect.getsource(module) if source is None else source
        self.steps = {s.marker: s for s in marked_steps(source, functions)}
        self.codes = {getattr(module, f).__code__: f for f in functions if hasattr(module, f)}
        self.by_line = {}
        for s in self.steps.values():
            self.by_line[(s.function, s.first_line)] = s
        self.values, self.history = {}, []
        self._pending = {}

    def _record(self, step, value):
        self.values[step.marker] = value = _copy(value)
        self.history.append((step.marker, value))

    def _snapshot(self, frame, step):
        try:
            value = eval(step.target, frame.f_globals, dict(frame.f_locals))
        except Exception:      # the statement did not bind its target (e.g. it raised)
            return
        self._record(step, value)

    def _local(self, frame, event, arg):
        name = self.codes[frame.f_code]
        pending = self._pending.get(frame)
        if pending is not None and (event == "return" or not
                                    (pending.first_line <= frame.f_lineno <= pending.last_line)):
            del self._pending[frame]
            if pending.target is None:
                if event == "return":
                    self._record(pending, arg)
            else:
                self._snapshot(frame, pending)
        if event == "line":
            step = self.by_line.get((name, frame.f_lineno))
            if step is not None and self._pending.get(frame) is not step:
                self._pending[frame] = step
        return self._local

    def _global(self, frame, event, arg):
        if event == "call" and frame.f_code in self.codes:
            return self._local
        # an enclosing Recorder (of another module) keeps recording its own functions
        return self._previous(frame, event, arg) if self._previous is not None else None

    def __enter__(self):
        self._previous = sys.gettrace()
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc):
        sys.settrace(self._previous)
        return False
