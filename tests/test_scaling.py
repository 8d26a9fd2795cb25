"""scratchgpt scaling: the power-law fit, its bootstrap, the argument checks and a tiny sweep
end to end (nano-sized models for a few dozen steps each on tests/corpus.py's text)."""
import json
import math
import os
import shutil

import numpy as np
import pytest

from scratchgpt import cli
from scratchgpt.scaling import (B_BOUNDS, DEFAULT_SIZES, FitError, bootstrap_fit,
                                fit_power_law, parse_args, plan_sweep)

TRUE = dict(a=2.0e3, b=0.3, c=1.8)          # L(C) = 2000 C^-0.3 + 1.8: 3.8 .. 2.1 over 1e10..1e13
COMPUTE = np.geomspace(1e10, 1e13, 8)


def law(C, a, b, c):
    return a * np.asarray(C, dtype=np.float64) ** -b + c


def jacobian(C, a, b, c):
    """d L / d (a, b, c), written out independently of the fit's variable projection."""
    Cb = C ** -b
    return np.stack([Cb, -a * np.log(C) * Cb, np.ones_like(C)], axis=1)


# ------------------------------------------------------------------------------ the fit
def test_fit_recovers_exact_parameters_from_noiseless_points():
    fit = fit_power_law(COMPUTE, law(COMPUTE, **TRUE))
    assert fit.a == pytest.approx(TRUE["a"], rel=1e-4)
    assert fit.b == pytest.approx(TRUE["b"], rel=1e-5)
    assert fit.c == pytest.approx(TRUE["c"], rel=1e-5)
    assert fit.rms < 1e-6
    assert fit.warnings == [] and fit.notes == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_parameters_within_their_standard_errors_from_noisy_points(seed):
    """Gaussian noise sigma on the losses: least squares has the covariance
    sigma^2 (J^T J)^-1 to first order, J the Jacobian at the true parameters. Each estimate and
    the extrapolated loss at 5x the largest compute must lie within 4 standard errors (a
    chance of ~6e-5 each to fail if the fit is right; a wrong fit misses by far more)."""
    sigma = 0.01
    rng = np.random.default_rng(seed)
    loss = law(COMPUTE, **TRUE) + rng.normal(0.0, sigma, COMPUTE.shape)
    fit = fit_power_law(COMPUTE, loss)
    J = jacobian(COMPUTE, **TRUE)
    cov = sigma ** 2 * np.linalg.inv(J.T @ J)
    se = np.sqrt(np.diag(cov))
    assert se[1] < 0.2 * TRUE["b"]            # the tolerance is tight enough to mean something
    for k, est, s in zip("abc", (fit.a, fit.b, fit.c), se):
        assert abs(est - TRUE[k]) <= 4 * s, (k, est, TRUE[k], s)
    C_new = 5 * COMPUTE[-1]
    g = jacobian(np.array([C_new]), **TRUE)[0]
    se_pred = math.sqrt(g @ cov @ g)
    assert abs(fit.predict(C_new) - law(C_new, **TRUE)) <= 4 * se_pred
    assert fit.rms == pytest.approx(sigma, rel=0.6)


def test_fit_reports_a_flat_sweep_instead_of_a_trend():
    rng = np.random.default_rng(3)
    fit = fit_power_law(COMPUTE, 3.0 + rng.normal(0, 0.01, COMPUTE.shape))
    flat = any("does not fall" in w for w in fit.warnings)
    at_floor = any("already flattened" in w or "end of its range" in w for w in fit.warnings)
    assert flat or at_floor, fit.warnings


def test_fit_reports_when_no_floor_is_resolved():
    fit = fit_power_law(COMPUTE, law(COMPUTE, a=50.0, b=0.1, c=0.0))
    assert fit.c < 1e-5 and fit.b == pytest.approx(0.1, rel=1e-5)
    assert any("floor c is at 0" in n for n in fit.notes) and fit.warnings == []


def test_fit_reports_an_exponent_at_its_bound():
    # a loss that falls by 1 between the first two runs, then not at all: b = 4 > 3
    fit = fit_power_law(COMPUTE, law(COMPUTE, a=1e40, b=4.0, c=2.0))
    assert fit.b == pytest.approx(B_BOUNDS[1])
    assert any("end of its range" in w for w in fit.warnings)


def test_fit_warns_without_a_degree_of_freedom():
    fit = fit_power_law(COMPUTE[:3], law(COMPUTE[:3], **TRUE))
    assert any("3 distinct compute values" in w for w in fit.warnings)


@pytest.mark.parametrize("compute, loss, where", [
    ([1e10, 2e10, 4e10, np.nan], [3, 2.5, 2.2, 2.1], "compute"),
    ([1e10, 2e10, 4e10, 8e10], [3, 2.5, -2.2, 2.1], "loss"),
    ([1e10, 2e10, 4e10, 8e10], [3, 2.5, np.inf, 2.1], "loss"),
    ([0, 2e10, 4e10, 8e10], [3, 2.5, 2.2, 2.1], "compute"),
    ([1e10, 2e10, 4e10], [3, 2.5], "compute, loss"),
    ([[1e10, 2e10], [4e10, 8e10]], [[3, 2.5], [2.2, 2.1]], "compute, loss"),
    ([1e10, 1e10, 4e10, 4e10], [3, 2.9, 2.2, 2.1], "compute"),
])
def test_fit_refuses_points_it_cannot_fit(compute, loss, where):
    with pytest.raises(FitError) as e:
        fit_power_law(compute, loss)
    assert e.value.where == where


# ------------------------------------------------------------------------------ bootstrap
def test_bootstrap_of_noiseless_points_gives_the_same_curve_every_time():
    boot = bootstrap_fit(COMPUTE, law(COMPUTE, **TRUE), n_boot=50, predict_at=1e14, seed=0)
    assert boot.requested == 50 and 0 < boot.used <= 50
    assert boot.params.shape == (boot.used, 3) and boot.predictions.shape == (boot.used,)
    np.testing.assert_allclose(boot.params[:, 1], TRUE["b"], rtol=1e-4)
    np.testing.assert_allclose(boot.params[:, 2], TRUE["c"], rtol=1e-4)
    np.testing.assert_allclose(boot.predictions, law(1e14, **TRUE), rtol=1e-5)


def test_bootstrap_intervals_cover_the_truth_and_are_reproducible():
    rng = np.random.default_rng(7)
    loss = law(COMPUTE, **TRUE) + rng.normal(0.0, 0.01, COMPUTE.shape)
    boot = bootstrap_fit(COMPUTE, loss, n_boot=300, predict_at=5e13, seed=1)
    again = bootstrap_fit(COMPUTE, loss, n_boot=300, predict_at=5e13, seed=1)
    np.testing.assert_array_equal(boot.params, again.params)
    # 8 runs: almost every resample holds 3 distinct ones
    assert boot.used >= 295
    lo, hi = boot.interval(boot.predictions)
    assert lo < law(5e13, **TRUE) < hi and hi - lo < 0.5
    lo_b, hi_b = boot.interval(boot.params[:, 1])
    assert lo_b < TRUE["b"] < hi_b


def test_bootstrap_refuses_too_few_runs_and_bad_counts():
    with pytest.raises(FitError, match="n_boot"):
        bootstrap_fit(COMPUTE, law(COMPUTE, **TRUE), n_boot=0)
    with pytest.raises(FitError, match="distinct"):
        bootstrap_fit(COMPUTE[:3], law(COMPUTE[:3], **TRUE), min_distinct=4)


# ------------------------------------------------------------------------------ the command
def test_default_sweep_extrapolates_4_to_10x_along_one_tokens_per_parameter_ray():
    """The default plan, without data (the vocabulary of its 512-token BPE is all it needs)."""
    args = parse_args([])
    runs, target = plan_sweep(args, "unused", 512)
    assert [r.label for r in runs] == list(DEFAULT_SIZES)
    assert target.label == "4x128x4"                     # the mini preset's shape
    assert all(a.compute < b.compute for a, b in zip(runs, runs[1:]))
    assert 4 <= target.compute / runs[-1].compute <= 10
    for r in runs + [target]:
        assert r.tokens / r.params == pytest.approx(4, rel=0.02)
        assert r.compute == r.tokens * r.flops_per_token


def run_cli(capsys, *argv):
    try:
        code = cli.main(["scaling", *argv])
    except SystemExit as e:            # argparse's errors end the parser (house format, exit 2)
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, where", [
    (["--sizes", "1x8", "1x12", "1x16"], "--sizes"),
    (["--sizes", "1x8", "1x12", "1x16", "2x16", "--tokens", "1k", "2k"], "--tokens"),
    (["--sizes", "1x8", "1x12x5", "1x16", "2x16"], "--sizes"),
    (["--sizes", "1x8", "0x12", "1x16", "2x16"], "--sizes"),
    (["--tokens", "0"], "--tokens"),
    (["--tokens", "lots"], "--tokens"),
    (["--target", "4by128"], "--target"),
])
def test_bad_arguments_are_one_line_usage_errors(capsys, tmp_path, argv, where):
    code, out, err = run_cli(capsys, *argv, "--out", str(tmp_path))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("scratchgpt scaling: error: ")
    assert where in err
    assert not os.listdir(tmp_path)          # refused before any data was read or written


def tiny_sweep(text_file, out, *extra):
    return ["--data", text_file, "--tokenizer", "char", "--sizes", "1x8", "1x12", "1x16",
            "2x16", "2x24", "--tokens", "3k", "--target", "2x48", "--block-size", "16",
            "--batch-size", "4", "--eval-iters", "8", "--bootstrap", "100", "--out", str(out),
            "--json", *extra]


def test_a_target_below_the_sweep_is_refused(capsys, text_file, tmp_path):
    argv = tiny_sweep(text_file, tmp_path)
    argv[argv.index("2x48")] = "1x8"
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and "--target / --target-tokens" in err and "not above" in err
    assert json.loads(out.strip().splitlines()[-1])["exit_code"] == 2


def test_token_counts_that_round_to_the_same_batches_are_the_same_run(capsys, text_file,
                                                                       tmp_path):
    """2990 and 3000 tokens are both 47 batches of 4 x 16."""
    argv = tiny_sweep(text_file, tmp_path)
    i = argv.index("--sizes")
    argv[i + 1:i + 6] = ["1x8", "1x8", "1x12", "1x16", "2x16"]
    argv[argv.index("--tokens") + 1:argv.index("--tokens") + 2] = ["2990", "3000", "3k", "3k",
                                                                   "3k"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and "listed twice" in err and "--sizes / --tokens" in err


def test_tiny_sweep_end_to_end_json_plot_and_reuse(capsys, text_file, tmp_path):
    code, out, err = run_cli(capsys, *tiny_sweep(text_file, tmp_path))
    assert code == 0, err
    s = json.loads(out.strip().splitlines()[-1])
    assert "FLOP" in err                                 # the sweep's progress bar
    runs, target = s["runs"], s["target"]
    # 3k tokens, in whole batches of 4 x 16
    assert len(runs) == 5 and all(r["tokens"] == 47 * 64 for r in runs + [target])
    assert [r["compute"] for r in runs] == sorted(r["compute"] for r in runs)
    assert target["compute"] == pytest.approx(s["compute_ratio"] * runs[-1]["compute"])
    # the JSON's numbers agree with each other and with the runs' own records
    a, b, c = (s["fit"][k] for k in "abc")
    assert s["predicted_loss"] == pytest.approx(a * target["compute"] ** -b + c, rel=1e-12)
    with open(os.path.join(tmp_path, "runs", target["name"], "summary.json")) as f:
        assert json.load(f)["val_loss"] == s["measured_loss"] == target["val_loss"]
    assert s["relative_error"] == pytest.approx(
        (s["predicted_loss"] - s["measured_loss"]) / s["measured_loss"], rel=1e-12)
    assert s["within_5_percent"] == (abs(s["relative_error"]) <= 0.05)
    refit = fit_power_law([r["compute"] for r in runs], [r["val_loss"] for r in runs])
    assert (refit.a, refit.b, refit.c) == (a, b, c)
    assert s["trustworthy"] == (not s["warnings"]) and isinstance(s["notes"], list)
    assert s["bootstrap"]["requested"] == 100 and 0 < s["bootstrap"]["used"] <= 100
    lo, hi = s["predicted_interval_95"]
    assert lo <= hi and all(math.isfinite(v) for v in (lo, hi, s["measured_loss"]))
    for r in runs:                                       # nano models on this text learn
        assert 0 < r["val_loss"] < math.log(17)
    with open(s["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(s["plot"]) > 10_000
    # with --json the report goes to stderr, so stdout's last line is the JSON alone
    assert "relative error" in err and f"measured {s['measured_loss']:.4f}" in err

    # again, from a copy of the folder: every run is reused, the numbers are the same
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    shutil.copytree(tmp_path, moved)
    code, out2, err2 = run_cli(capsys, *tiny_sweep(text_file, moved))
    s2 = json.loads(out2.strip().splitlines()[-1])
    assert code == 0 and "reused" in err2
    assert s2["measured_loss"] == s["measured_loss"] and s2["fit"] == s["fit"]
    # other data (another validation split) in the same folder: nothing is reused
    code, out3, err3 = run_cli(capsys, *tiny_sweep(text_file, moved, "--val-fraction", "0.2"))
    assert code == 0 and "reused" not in err3
    assert json.loads(out3.strip().splitlines()[-1])["measured_loss"] != s["measured_loss"]
