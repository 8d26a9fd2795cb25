"""`scratchgpt exercise`: the blanked copies cannot drift from the reference, the checker accepts
the reference, rejects the blanks and every break-it mistake, naming the first wrong step."""
import inspect
import re
from pathlib import Path

import pytest

from scratchgpt import reference
from scratchgpt.cli import main as cli_main
from scratchgpt.exercise import (BREAK_IT, EXERCISE_DIR, OPS, blank_source, check_source,
                                 first_wrong, gradient_functions, run_break_it)
from scratchgpt.stepwise import marked_steps

ROOT = Path(__file__).resolve().parents[1]
TODO = re.compile(r"^(\s*)(?:return \.\.\.|\S.* = \.\.\.)  # \((\d+)\) TODO \(docs/gradients/(\w+)\.md"
                  r"(?:, in place: the caller holds this array)?\)$")


def reference_source(op):
    return inspect.getsource(getattr(reference, op))


@pytest.mark.parametrize("op", OPS)
def test_committed_blank_is_generated_from_the_reference(op):
    committed = (ROOT / "docs" / "exercises" / f"{op}.py").read_text()
    assert committed == blank_source(op), \
        f"docs/exercises/{op}.py is stale: run `scratchgpt exercise --write-blanks docs/exercises`"


def _function_lines(source, names):
    import ast
    return {line for fn in ast.parse(source).body
            if isinstance(fn, ast.FunctionDef) and fn.name in names
            for line in range(fn.body[0].lineno, fn.end_lineno + 1)}


@pytest.mark.parametrize("op", OPS)
def test_blank_is_the_reference_with_exactly_the_gradient_steps_blanked(op):
    """Independently of how blank_source works: the diff touches only the gradient function's
    body, each hunk replaces the statements ending in one marked step `(n)` by one TODO line for
    that same n, and every marked step of the gradient is blanked exactly once."""
    ref, blank = reference_source(op).splitlines(), (ROOT / "docs/exercises" / f"{op}.py").read_text().splitlines()
    inside = _function_lines(reference_source(op), gradient_functions(op))
    expected = {s.marker for s in marked_steps(reference_source(op), gradient_functions(op))}
    assert expected, f"{op} has no marked gradient step"
    blanked, i = [], 0
    for line in blank:
        m = TODO.match(line)
        if m is None:                 # an untouched line: the reference's next line, verbatim
            assert i < len(ref) and ref[i] == line, (i + 1, line)
            i += 1
            continue
        n = int(m.group(2))
        assert m.group(3) == op, line
        # the blank stands for the reference lines up to the one carrying `# (n)`
        k = next((k for k in range(i, len(ref)) if re.search(r"# \((\d+)\)", ref[k])), None)
        assert k is not None, f"no marked line left in reference/{op}.py for {line!r}"
        removed_markers = [int(x) for r in ref[i:k + 1] for x in re.findall(r"# \((\d+)\)", r)]
        assert removed_markers == [n], (ref[i:k + 1], line)
        assert all(num + 1 in inside for num in range(i, k + 1)), \
            f"lines {i + 1}-{k + 1} of reference/{op}.py are outside its gradient function"
        assert m.group(1) == re.match(r"\s*", ref[i]).group(0), "indentation"
        blanked.append(n)
        i = k + 1
    assert i == len(ref), "the blank file ends early"
    assert sorted(blanked) == sorted(expected)


@pytest.mark.parametrize("op", OPS)
def test_checker_accepts_the_reference(op):
    path = inspect.getsourcefile(getattr(reference, op))
    evaluations = check_source(op, reference_source(op), path)
    assert evaluations and first_wrong(evaluations) is None


@pytest.mark.parametrize("op", OPS)
def test_checker_names_the_first_blank(op, capsys):
    first = min(s.marker for s in marked_steps(reference_source(op), gradient_functions(op)))
    assert cli_main(["exercise", op]) == 1
    out = capsys.readouterr().out
    assert re.search(rf"^first wrong step: \({first}\) \S+: not filled in", out, re.M), out[-400:]


@pytest.mark.parametrize("b", BREAK_IT, ids=lambda b: b.name)
def test_break_it_is_rejected_naming_the_first_wrong_step(b):
    passed, text = run_break_it(b)
    assert not passed
    if b.target == "model":
        assert f"failing parameters: {b.first_wrong}" in text
        line = f"failing parameters: {b.first_wrong}"
    else:
        line = f"first wrong step: {b.first_wrong}: WRONG"
        assert re.search(rf"^{re.escape(line)}  \(case ", text, re.M), text[-600:]
    page = (ROOT / "docs" / "exercises" / "break_it" / f"{b.name}.md").read_text()
    assert line in page, f"docs/exercises/break_it/{b.name}.md does not show `{line}`"
    assert f"scratchgpt exercise --break-it {b.name}" in page
    # the page shows the output the check prints now: the same verdict for every step and
    # parameter (the digits of the errors are left out: they are finite-difference noise)
    assert _verdicts(page) == _verdicts(text), f"docs/exercises/break_it/{b.name}.md is stale"


def _verdicts(text):
    step = re.compile(r"^  (?:\(\d+\) )?\S+: (exact|close|WRONG|not filled in)", re.M)
    param = re.compile(r"^(\S+)\s+\S+\s+\S+  (ok|FAIL)$", re.M)
    return [m.group(0).split(" (rel")[0] for m in step.finditer(text)] + param.findall(text)


def test_a_filled_in_step_is_graded(tmp_path, capsys):
    """A student who fills (5)-(7) of layernorm correctly and (8) without -mean(g) is told (8)."""
    text = blank_source("layernorm")
    text = text.replace("dweight = ...  # (5)", "dweight = (dout * xhat).sum(axis=red)  # (5)")
    text = text.replace("dbias = ...  # (6)", "dbias = dout.sum(axis=red)  # (6)")
    text = text.replace("g = ...  # (7)", "g = dout * weight  # (7)")
    text = text.replace("dx = ...  # (8)", "dx = rstd * (g - xhat * (g * xhat).mean(-1, keepdims=True))  # (8)")
    f = tmp_path / "mine.py"
    f.write_text(text)
    assert cli_main(["exercise", "layernorm", "--file", str(f)]) == 1
    out = capsys.readouterr().out
    assert "first wrong step: (8) dx: WRONG" in out
    assert re.search(r"^  \(7\) g: close", out, re.M)


@pytest.mark.parametrize("content, message", [
    ("def forward(:\n", "syntax error at line 1"),
    ("import nosuchmodule_xyz\n", "importing it raised ModuleNotFoundError"),
    ("x = 1\n", "no function forward, backward"),
])
def test_bad_files_get_one_line(tmp_path, capsys, content, message):
    f = tmp_path / "bad.py"
    f.write_text(content)
    assert cli_main(["exercise", "layernorm", "--file", str(f)]) == 1
    err = capsys.readouterr().err
    assert message in err and str(f) in err and len(err.strip().splitlines()) == 1


def test_usage_errors(tmp_path, capsys):
    assert cli_main(["exercise", "nosuchop"]) == 2
    assert "unknown op 'nosuchop'" in capsys.readouterr().err
    assert cli_main(["exercise", "--break-it", "nope"]) == 2
    assert "unknown break-it 'nope'" in capsys.readouterr().err
    assert cli_main(["exercise", "layernorm", "--file", str(tmp_path / "missing.py")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_write_blanks(tmp_path, capsys):
    assert cli_main(["exercise", "--write-blanks", str(tmp_path / "ex")]) == 0
    assert sorted(f.name for f in (tmp_path / "ex").iterdir()) == sorted(f"{op}.py" for op in OPS)
    assert (tmp_path / "ex" / "linear.py").read_text() == blank_source("linear")
    (tmp_path / "file").write_text("")
    assert cli_main(["exercise", "--write-blanks", str(tmp_path / "file")]) == 1
    assert "cannot write it" in capsys.readouterr().err


def test_exercise_dir_is_the_checkouts():
    assert EXERCISE_DIR == ROOT / "docs" / "exercises"
