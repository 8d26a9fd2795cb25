"""`scratchgpt gradcheck OP --show`: every step of the derivation, each backward step against
finite differences; `--backend host` beside the reference; `--plot DIR` figures; the recorder."""
import re
from pathlib import Path

import numpy as np
import pytest

from scratchgpt import gradcheck, reference
from scratchgpt.cli import main as cli_main
from scratchgpt.exercise import BREAK_IT_BY_NAME, broken_source, load_module
from scratchgpt.stepwise import Recorder, marked_steps

DOCS = Path(__file__).resolve().parents[1] / "docs" / "gradients"
OPS = reference.OPS


def doc_markers(op):
    """Every step number the derivation page cites: `(n)` in code spans, "marker (n)" in text."""
    text = (DOCS / f"{op}.md").read_text()
    found = set(re.findall(r"`\((\d+)\)`", text)) | set(re.findall(r"marker\s*\((\d+)\)", text))
    return {int(n) for n in found}


def code_markers(op):
    import inspect
    return {s.marker for s in marked_steps(inspect.getsource(getattr(reference, op)),
                                           ("forward", "backward", "update"))}


@pytest.mark.parametrize("op", OPS)
def test_docs_and_code_name_the_same_steps(op):
    assert doc_markers(op) == code_markers(op), f"docs/gradients/{op}.md vs reference/{op}.py"


@pytest.mark.parametrize("op", OPS)
def test_show_prints_every_marker_each_backward_step_compared(op, capsys):
    assert cli_main(["gradcheck", op, "--show"]) == 0
    out = capsys.readouterr().out
    shown = {int(n) for n in re.findall(r"^  \((\d+)\) ", out, re.M)}
    assert doc_markers(op) <= shown, f"markers of the derivation missing from --show: " \
                                     f"{sorted(doc_markers(op) - shown)}"
    # every backward step and every returned gradient carries a finite-difference verdict
    verdicts = re.findall(r"^      vs .*: (close|exact)", out, re.M)
    assert len(verdicts) >= len(doc_markers(op)) // 2
    assert "WRONG" not in out and out.rstrip().endswith("all ok")


def test_gru_show_prints_every_step_of_backpropagation_through_time(capsys):
    """The GRU's time-loop steps live in recurrence_forward / recurrence_backward, and its
    (0) and (17) assign a tuple (`xp, lin_cache = ...`): all are shown, the gradients checked."""
    assert cli_main(["gradcheck", "gru", "--show"]) == 0
    out = capsys.readouterr().out
    shown = {int(n) for n in re.findall(r"^  \((\d+)\) ", out, re.M)}
    assert shown == set(range(18)) and doc_markers("gru") <= shown   # the doc cites (2)-(4) as a range
    assert re.search(r"^  \(0\) xp \[", out, re.M) and re.search(r"^  \(17\) dx \[", out, re.M)
    assert len(re.findall(r"^      vs dL/d\w+: (close|exact)", out, re.M)) == 2 + 6
    assert "WRONG" not in out and out.rstrip().endswith("all ok")


def test_show_values_are_the_ops_own():
    """The recorded (8) of layernorm is the dx the backward returns, and (7) is dy * w."""
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 3, 5)), rng.standard_normal(5), rng.standard_normal(5)
    dy = rng.standard_normal((2, 3, 5))
    with Recorder(reference.layernorm) as rec:
        y, cache = reference.layernorm.forward(x, w, b)
        dx, dw, db = reference.layernorm.backward(dy, cache)
    np.testing.assert_array_equal(rec.values[8], dx)
    np.testing.assert_array_equal(rec.values[7], dy * w)
    np.testing.assert_array_equal(rec.values[4], y)
    assert [n for n, _ in rec.history] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_recorders_nest():
    """Two recorders at once (the figures record attention and the loss in one model run)."""
    rng = np.random.default_rng(0)
    with Recorder(reference.residual) as outer, Recorder(reference.gelu) as inner:
        reference.residual.forward(rng.standard_normal(3), rng.standard_normal(3))
        reference.gelu.forward(rng.standard_normal(3))
    assert set(outer.values) == {1} and set(inner.values) == {1, 2}


def test_a_wrong_step_is_named_with_its_input():
    """The summary names the failing gradient (input), and the step where it first went wrong."""
    source, path = broken_source(BREAK_IT_BY_NAME["layernorm_mean"])
    module = load_module(source, path, "layernorm")
    case = next(c for c in gradcheck.op_cases(gradcheck.TINY_DIMS) if c.op == "layernorm")
    ev = gradcheck.evaluate(case, module, source)
    assert (ev.first_wrong.marker, ev.first_wrong.status) == (8, "WRONG")
    summary = gradcheck.format_summary([ev])
    assert re.search(r"^layernorm\s+dx\s.*FAIL", summary, re.M)
    assert re.search(r"^layernorm\s+dweight\s.*ok", summary, re.M)
    assert "first wrong step (8) dx: WRONG" in summary
    # the difference is rstd * mean(g): constant along each row
    diff = np.asarray(ev.first_wrong.value) - ev.first_wrong.expected
    assert np.allclose(diff, diff[..., :1], atol=1e-8)


def test_show_backend_host_prints_kernels_beside_reference(capsys):
    assert cli_main(["gradcheck", "layernorm", "softmax_xent", "--show", "--backend", "host"]) == 0
    out = capsys.readouterr().out
    assert out.count("kernels (host, float32) beside the reference") == 2
    for name in ("y", "dx", "dweight", "dbias", "dlogits"):
        assert re.search(rf"^  {name} \[[0-9, ]*\]: rel \S+  ok$", out, re.M), name
    assert "      kernel:" in out and "      reference:" in out


def test_adamw_is_checked(capsys):
    assert cli_main(["gradcheck", "adamw"]) == 0
    assert re.search(r"^adamw\[3 steps, decay\]\s+param\s.*ok", capsys.readouterr().out, re.M)


def test_plot_writes_the_figures(tmp_path, capsys):
    assert cli_main(["gradcheck", "--plot", str(tmp_path / "figs")]) == 0
    for name in ("attention_P.png", "attention_dS.png", "dlogits.png"):
        data = (tmp_path / "figs" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    assert "wrote" in capsys.readouterr().out


def test_figure_arrays_are_what_they_claim():
    from scratchgpt.figures import record_sentence
    words, vocab, P, dS, dlogits = record_sentence()
    T = len(words)
    assert P.shape == dS.shape == (T, T) and dlogits.shape == (T, len(vocab))
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    assert (np.triu(P, 1) == 0).all() and (np.triu(dS, 1) == 0).all()
    np.testing.assert_allclose(dS.sum(axis=1), 0.0, atol=1e-12)
    counted = dlogits[:-1]                      # the last word has no next word: ignored
    np.testing.assert_allclose(counted.sum(axis=1), 0.0, atol=1e-12)
    assert (dlogits[-1] == 0).all() and ((counted < 0).sum(axis=1) == 1).all()


@pytest.mark.parametrize("argv, message", [
    (["gradcheck", "nosuchop", "--show"], "unknown op(s) nosuchop"),
    (["gradcheck", "model", "--show"], "--show and --plot apply to ops"),
    (["gradcheck", "--show"], "--show needs the op(s) to show"),
    (["gradcheck", "layernorm", "--backend", "host"], "--backend applies to --show"),
])
def test_usage_errors(argv, message, capsys):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.cuda
def test_show_backend_cuda_prints_kernels_beside_reference(capsys):
    """On a GPU, or on the emulated device (SCRATCHGPT_EMULATE_CUDA=1, CuPy-strict arrays: the
    example's token ids and targets must be handed over as device arrays too)."""
    import warnings
    from scratchgpt.ops import get_backend
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            get_backend("cuda")
    except RuntimeError as e:
        pytest.skip(f"cuda backend unavailable: {e}")
    assert cli_main(["gradcheck", "embedding", "softmax_xent", "adamw", "--show",
                     "--backend", "cuda"]) == 0
    out = capsys.readouterr().out
    assert out.count("kernels (cuda, float32) beside the reference") == 3
    for name in ("dwte", "dwpe", "dlogits", "param"):
        assert re.search(rf"^  {name} \[[0-9, ]*\]: rel \S+  ok$", out, re.M), name


def test_show_json_has_every_step_and_the_kernels(capsys):
    import json
    assert cli_main(["gradcheck", "attention", "--show", "--json", "--backend", "host"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and len(report["cases"]) == 5
    for case in report["cases"]:
        markers = {s["marker"] for s in case["steps"] if s["marker"] is not None}
        assert markers == set(range(1, 10)) and case["first_wrong"] is None
        assert all(s["status"] in ("shown", "close", "exact") for s in case["steps"])
        assert set(case["kernels"]["rel"]) == {"y", "dqkv"}
