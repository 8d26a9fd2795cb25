"""Exercises: write an op's backward yourself, checked step by step.

docs/exercises/OP.py is python/scratchgpt/reference/OP.py with every marked step of the
gradient blanked (`dx = ...  # (8) TODO`); everything else, the forward included, is the
reference itself (`blank_source` makes the copy; tests/test_exercise.py proves each committed file
is exactly that). Fill the blanks, keeping each `# (n)` comment on the statement that computes
step n, then

    scratchgpt exercise OP [--file F]

runs your file on the same tiny examples as `scratchgpt gradcheck OP --show` and compares every
step with its finite-difference value: it names the first wrong step, and prints what your code
computed there beside what it should be.

The break-it pages (docs/exercises/break_it/) show five classic mistakes and what the check prints
for each; `scratchgpt exercise --break-it NAME` reproduces one (BREAK_IT: each is a one-place
edit of the reference or of model.py).
"""
import ast
import importlib.util
import inspect
import os
from dataclasses import dataclass
from pathlib import Path

from . import gradcheck, reference
from .errors import BadFileError, MissingFileError, UsageError
from .stepwise import marked_steps, statement_target

OPS = reference.OPS
REPO_ROOT = Path(__file__).resolve().parents[2]
EXERCISE_DIR = REPO_ROOT / "docs" / "exercises"


def gradient_functions(op):
    """The functions whose marked steps are the exercise: the backward (adamw: the update)."""
    return ("update",) if op == "adamw" else ("backward",)


def _assigned_name(stmt):
    """The variable a statement binds or updates in place (`a = ...`, `a *= ...`), else None."""
    target = (stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else
              stmt.target if isinstance(stmt, ast.AugAssign) else None)
    while isinstance(target, ast.Subscript):
        target = target.value
    return target.id if isinstance(target, ast.Name) else None


def blanked_spans(op, source):
    """[(first line, last line, marker, target, in place)] of each step to blank. A step is its
    marked statement plus the unmarked statements just before it that build the same variable
    (`two_du = x * x; two_du *= ...; two_du += ...  # (3)` is one step)."""
    steps = {s.first_line: s for s in marked_steps(source, gradient_functions(op))}
    spans = []
    for fn in ast.parse(source).body:
        if not (isinstance(fn, ast.FunctionDef) and fn.name in gradient_functions(op)):
            continue
        for node in ast.walk(fn):
            body = getattr(node, "body", None)
            for block in (body, getattr(node, "orelse", None)):
                if not isinstance(block, list):
                    continue
                for i, stmt in enumerate(block):
                    step = steps.get(getattr(stmt, "lineno", None))
                    if step is None:
                        continue
                    name, j = _assigned_name(stmt), i
                    while (name and j > 0 and block[j - 1].lineno not in steps
                           and isinstance(block[j - 1], (ast.Assign, ast.AugAssign))
                           and statement_target(block[j - 1]) == step.target):
                        j -= 1
                    # updated in place and handed in by the caller (adamw's param, m, v)
                    in_place = (isinstance(block[j], ast.AugAssign)
                                and name in {a.arg for a in fn.args.args})
                    spans.append((block[j].lineno, step.last_line, step.marker, step.target,
                                  in_place))
    return spans


def blank_source(op, source=None):
    """The reference source of `op` with each step of its gradient blanked (blanked_spans): the
    statements become one line `TARGET = ...  # (n) TODO` at their indentation (`return ...`
    for a returned value)."""
    source = inspect.getsource(getattr(reference, op)) if source is None else source
    lines = source.splitlines(keepends=True)
    for first, last, marker, target, in_place in sorted(blanked_spans(op, source), reverse=True):
        indent = lines[first - 1][:len(lines[first - 1]) - len(lines[first - 1].lstrip())]
        statement = "return ..." if target is None else f"{target} = ..."
        hint = ", in place: the caller holds this array" if in_place else ""
        lines[first - 1:last] = [
            f"{indent}{statement}  # ({marker}) TODO (docs/gradients/{op}.md{hint})\n"]
    return "".join(lines)


def load_module(source, filename, op):
    """Execute `source` as a module of the reference package (its relative imports work).
    BadFileError when it does not compile or raises on import, or lacks the op's functions."""
    name = f"scratchgpt.reference._exercise_{op}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__, module.__file__ = "scratchgpt.reference", str(filename)
    try:
        exec(compile(source, str(filename), "exec"), module.__dict__)
    except SyntaxError as e:
        raise BadFileError(f"syntax error at line {e.lineno}: {e.msg}", filename,
                           f"a Python module like python/scratchgpt/reference/{op}.py") from None
    except Exception as e:
        raise BadFileError(f"importing it raised {type(e).__name__}: {e}", filename,
                           f"a Python module like python/scratchgpt/reference/{op}.py") from None
    needed = ("update",) if op == "adamw" else ("forward", "backward")
    missing = [f for f in needed if not callable(getattr(module, f, None))]
    if missing:
        raise BadFileError(f"no function {', '.join(missing)}", filename,
                           f"the functions of python/scratchgpt/reference/{op}.py")
    return module


def read_source(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise MissingFileError("no such file", path, "a Python file with the op's functions") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadFileError(f"cannot read it: {e}", path, "a UTF-8 Python file") from None


def check_source(op, source, filename):
    """Grade a module's source on every case of `op` (tiny shapes). Returns [Evaluation]."""
    module = load_module(source, filename, op)
    evaluations = []
    for case in gradcheck.op_cases(gradcheck.TINY_DIMS):
        if case.op != op:
            continue
        evaluations.append(gradcheck.evaluate(case, module, source,
                                              gradcheck.reference_forward_values(case)))
    return evaluations


def first_wrong(evaluations):
    """(case name, Row or None, error) of the first case that fails, else None."""
    for ev in evaluations:
        if not ev.ok:
            return ev.case.name, ev.first_wrong, ev.error
    return None


def format_report(evaluations):
    out = []
    for ev in evaluations:
        out.append(gradcheck.format_evaluation(ev, verbose=False))
    failed = first_wrong(evaluations)
    if failed is None:
        out.append("every step of every case matches: well done")
        return "\n".join(out)
    case, row, error = failed
    out.append("")
    out.append(f"first wrong step: {gradcheck._describe(row)}  (case {case})")
    if row is not None and row.expected is not None and row.value is not None:
        out.append(gradcheck.format_row(row))
    if error:
        out.append(f"your code raised {error}")
    return "\n".join(out)


# ------------------------------------------------------------------------------ break it
@dataclass(frozen=True)
class BreakIt:
    name: str
    title: str
    target: str          # an op (its reference module) or "model" (python/scratchgpt/model.py)
    old: str             # the one place edited, exactly as it stands in the source
    new: str
    first_wrong: str     # what the check names first: "(8) dx", or a parameter


BREAK_IT = (
    BreakIt("layernorm_mean", "drop -mean(g) in the layer-norm backward", "layernorm",
            "dx = rstd * (g - g.mean(axis=-1, keepdims=True)\n",
            "dx = rstd * (g\n", "(8) dx"),
    BreakIt("xent_one_over_n", "forget 1/N in the loss gradient", "softmax_xent",
            "p *= (keep * (dloss / max(n, 1)))[:, None].astype(p.dtype)",
            "p *= (keep * dloss)[:, None].astype(p.dtype)", "(7) p"),
    BreakIt("tied_wte", "forget that the tied wte gets two gradients", "model",
            "grads[\"wte.weight\"] = (dwte if \"wte.weight\" not in grads\n"
            "                               else be.residual.forward(grads[\"wte.weight\"], dwte)[0])",
            "grads[\"wte.weight\"] = dwte", "wte.weight"),
    BreakIt("attention_sqrt_d", "put sqrt(D) on the wrong side in the attention backward", "attention",
            "dqkv[:, :, 0] = (ds @ k).transpose(0, 2, 1, 3) * scale ",
            "dqkv[:, :, 0] = (ds @ k).transpose(0, 2, 1, 3) / scale ", "(8) dqkv[:, :, 0]"),
    BreakIt("attention_mask", "forget the causal mask in the backward", "attention",
            "    q, k, v, p, scale = cache\n",
            "    q, k, v, p, scale = cache\n"
            "    p = softmax(q @ k.transpose(0, 1, 3, 2) * scale)   # P recomputed from the scores, no mask\n",
            "(5) dv"),
)
BREAK_IT_BY_NAME = {b.name: b for b in BREAK_IT}


def broken_source(b):
    """The reference (or model.py) source with the mistake made. ValueError if the place to
    edit is no longer in the source exactly once (the page would describe code that is gone)."""
    path = (Path(__file__).with_name("model.py") if b.target == "model"
            else Path(inspect.getsourcefile(getattr(reference, b.target))))
    source = path.read_text(encoding="utf-8")
    if source.count(b.old) != 1:
        raise ValueError(f"break-it {b.name}: the edited text occurs {source.count(b.old)} times "
                         f"in {path}, expected once")
    return source.replace(b.old, b.new), path


def run_break_it(b):
    """-> (passed, text): the check's verdict and what it prints."""
    source, path = broken_source(b)
    if b.target != "model":
        evaluations = check_source(b.target, source, f"reference/{path.name} with break-it {b.name}")
        return first_wrong(evaluations) is None, format_report(evaluations)
    name = "scratchgpt._break_it_model"
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    module.__package__ = "scratchgpt"
    exec(compile(source, f"{path.name} ({b.name})", "exec"), module.__dict__)
    result = gradcheck.check_model({}, per_tensor=6, model_class=module.GPT)
    lines = [f"{'parameter':<28}{'max abs err':>13}{'max rel err':>13}  result"]
    for pname, e in result["params"].items():
        lines.append(f"{pname:<28}{e['max_abs']:>13.2e}{e['max_rel']:>13.2e}  "
                     f"{'ok' if e['max_rel'] < gradcheck.MODEL_TOLERANCE else 'FAIL'}")
    lines.append(f"failing parameters: {', '.join(result['failing']) or 'none'}")
    return result["ok"], "\n".join(lines)


# ------------------------------------------------------------------------------- command
def run(args):
    if args.write_blanks:
        for op in OPS:
            path = os.path.join(args.write_blanks, f"{op}.py")
            try:
                os.makedirs(args.write_blanks, exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(blank_source(op))
            except OSError as e:
                raise BadFileError(f"cannot write it: {e.strerror}", path,
                                   "a writable folder (--write-blanks)") from None
            print(f"wrote {path}")
        return 0
    if args.break_it:
        if args.break_it not in BREAK_IT_BY_NAME:
            raise UsageError(f"unknown break-it {args.break_it!r}", "--break-it",
                             f"one of {', '.join(BREAK_IT_BY_NAME)}")
        b = BREAK_IT_BY_NAME[args.break_it]
        passed, text = run_break_it(b)
        print(f"break it: {b.title}\n{text}")
        return 0 if passed else 1
    if args.op is None:
        raise UsageError("which op?", "OP", f"one of {', '.join(OPS)}")
    if args.op not in OPS:
        raise UsageError(f"unknown op {args.op!r}", "OP", f"one of {', '.join(OPS)}")
    path = args.file or str(EXERCISE_DIR / f"{args.op}.py")
    if args.file is None and not os.path.isfile(path):
        raise MissingFileError("no exercise file here", path,
                               "a checkout with docs/exercises/, or --file F")
    evaluations = check_source(args.op, read_source(path), path)
    print(format_report(evaluations))
    return 0 if first_wrong(evaluations) is None else 1


def register(sub):
    p = sub.add_parser("exercise", help="check your own backward of an op, step by step")
    p.add_argument("op", nargs="?", metavar="OP", help=f"the op ({', '.join(OPS)})")
    p.add_argument("--file", metavar="F",
                   help="your version of the op's module (default: docs/exercises/OP.py)")
    p.add_argument("--break-it", metavar="NAME",
                   help=f"run the check on a classic mistake ({', '.join(b.name for b in BREAK_IT)})")
    p.add_argument("--write-blanks", metavar="DIR",
                   help="write the blanked copy of every op's module into DIR")
    p.set_defaults(func=run)
