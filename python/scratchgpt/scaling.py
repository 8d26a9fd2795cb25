"""`scratchgpt scaling`: predict a run's loss from a sweep of smaller runs, then run it.

    scratchgpt scaling                                    # the default (~12 min, 2 idle cores)
    scratchgpt scaling --sizes 2x32 2x48 2x64 3x64 --tokens 200k 350k 560k 760k --target 3x96
    scratchgpt scaling --sizes 1x32 2x32 2x48 2x64 3x64 --tokens 1M      # same tokens for all
    scratchgpt scaling --json                             # last line: a JSON summary

Each size LxC (or LxCxH) is a GPT with L layers, C channels and H heads (default: C/32,
rounded down to a divisor of C), trained by `scratchgpt train`'s own loop on the same data
(the default corpus, tokenized once into OUT/data) for the given number of tokens, with the
learning rate decayed over the run's own length. Its compute is C = flops_per_token * D (our
GPTConfig.flops_per_token: 6 N per token plus attention's score and value products), and its
loss the validation loss at the end.

The final losses are fitted with L(C) = a * C^-b + c by least squares (NumPy only: for each b
the best a, c solve a bounded linear problem exactly, and b is searched globally on a grid and
refined), and the fit's uncertainty comes from a bootstrap over the runs. The fit predicts the
loss of --target (default: the mini preset's shape, 5.5x the sweep's largest compute),
which is then trained the same way; the summary gives the prediction, the measurement and the
relative error, and OUT/scaling.png the log-log plot. A fit that cannot be trusted (b or c on
a bound, too few runs, a bootstrap interval too wide to mean anything) says so and why.

Finished runs are kept in OUT/runs/NAME (their checkpoint, log and summary.json); running the
same command again reuses them, so an interrupted sweep continues where it stopped.
Method and measured results: docs/scaling.md.
"""
import argparse
import contextlib
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .cli import ArgumentParser, nonneg_int, open_fraction, positive_float, positive_int
from .errors import ScratchError, UsageError

# The default family: the `mini` preset's depth and heads (4 layers, 4 heads), the width grows,
# and each run sees TOKENS_PER_PARAM tokens per parameter, so compute grows ~N^2 along one ray
# of (N, D) (docs/scaling.md says why, and what a family that also changed depth did).
DEFAULT_SIZES = ("4x24x4", "4x32x4", "4x40x4", "4x48x4", "4x64x4", "4x80x4")
DEFAULT_TARGET = "4x128x4"        # the `mini` preset itself: ~5.5x the compute of 4x80
TOKENS_PER_PARAM = 4
HEAD_DIM = 32                     # default heads: C / 32 (mini's 4 heads of 32)
MIN_RUNS = 4                      # three parameters, and at least one degree of freedom
# search range of the exponent b; a fit that ends on either end is reported as such
B_BOUNDS = (1e-3, 3.0)
# a 95 % bootstrap interval of the prediction wider than this (half-width / prediction) cannot
# support a percent-level prediction: the fit is reported as not trustworthy
MAX_INTERVAL_HALF_WIDTH = 0.10


class FitError(ScratchError, ValueError):
    """Points that no power law can be fitted to (too few, not finite, not positive)."""


# ------------------------------------------------------------------------------ the fit
@dataclass
class PowerLawFit:
    """L(C) = a * C^-b + c, fitted to n points. `warnings` say why it cannot be trusted;
    `notes` are caveats that leave it usable (the floor c not resolved: a pure power law)."""
    a: float
    b: float
    c: float
    rms: float                    # root-mean-square residual, in the loss's units
    n: int
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def predict(self, compute):
        return self.a * np.asarray(compute, dtype=np.float64) ** -self.b + self.c


def _check_points(compute, loss):
    compute = np.asarray(compute, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    if compute.ndim != 1 or compute.shape != loss.shape:
        raise FitError(f"shapes {compute.shape} and {loss.shape} differ or are not 1-D",
                       "compute, loss", "two 1-D arrays of the same length")
    for name, v in (("compute", compute), ("loss", loss)):
        if not np.all(np.isfinite(v)) or np.any(v <= 0):
            raise FitError(f"{name} holds values that are not finite and positive: "
                           f"{v[~(np.isfinite(v) & (v > 0))][:3].tolist()}", name,
                           "finite numbers > 0")
    if len(np.unique(compute)) < 3:
        raise FitError(f"{len(np.unique(compute))} distinct compute values", "compute",
                       "at least 3 distinct values to determine a, b and c")
    return compute, loss


def _linear_step(f, y, c_hi):
    """For each row of f ([G, n], the power-law term at G trial exponents): the A >= 0 and
    0 <= c <= c_hi minimising ||A f + c - y||^2, and that minimum. A convex problem in two
    variables: its minimum is the unconstrained one when feasible, else on an edge of the box,
    where it is the clipped 1-D solution; the best feasible candidate is therefore exact."""
    fm, ym = f.mean(axis=1), y.mean()
    fc = f - fm[:, None]
    sff = np.einsum("gi,gi->g", fc, fc)
    sfy = fc @ (y - ym)
    safe = np.where(sff > 0, sff, 1.0)

    def sse(A, c):
        r = A[:, None] * f + c[:, None] - y[None, :]
        return np.einsum("gi,gi->g", r, r)

    candidates = []
    A = np.where(sff > 0, sfy / safe, 0.0)                      # unconstrained
    c = ym - A * fm
    ok = (A >= 0) & (c >= 0) & (c <= c_hi)
    candidates.append((np.where(ok, A, 0.0), np.where(ok, c, 0.0), ok))
    for c_edge in (0.0, c_hi):                                  # c on an edge, A clipped
        ce = np.full_like(fm, c_edge)
        A = np.maximum(0.0, (f @ y - c_edge * f.sum(axis=1)) / np.maximum(
            np.einsum("gi,gi->g", f, f), 1e-300))
        candidates.append((A, ce, np.ones_like(ok)))
    c = np.full_like(fm, min(max(ym, 0.0), c_hi))             # A = 0: a constant
    candidates.append((np.zeros_like(fm), c, np.ones_like(ok)))
    best_A, best_c = np.zeros_like(fm), np.zeros_like(fm)
    best = np.full_like(fm, np.inf)
    for A, c, ok in candidates:
        s = np.where(ok, sse(A, c), np.inf)
        take = s < best
        best_A, best_c, best = np.where(take, A, best_A), np.where(take, c, best_c), \
            np.where(take, s, best)
    return best_A, best_c, best


def fit_power_law(compute, loss, b_bounds=B_BOUNDS, grid=400):
    """Least-squares fit of L(C) = a * C^-b + c with a >= 0, b in b_bounds and
    0 <= c <= min(loss) (the floor lies below the best loss seen).

    Three parameters on a handful of points are ill-conditioned if fitted naively (a and b
    trade against each other over many decades, and a local method needs a good start), so
    the fit is a variable projection: C is measured from the points' geometric mean (a's scale
    stays near the losses'), for each exponent b the best (a, c) is solved exactly, and b is
    chosen on a log grid and refined on finer grids around the grid's best: a global
    minimum over b's range, with no initial guess."""
    compute, loss = _check_points(compute, loss)
    log_ref = float(np.mean(np.log(compute)))
    x = np.log(compute) - log_ref
    c_hi = float(loss.min())

    def profile(bs):
        bs = np.atleast_1d(bs)
        return _linear_step(np.exp(-bs[:, None] * x[None, :]), loss, c_hi)

    # b: a log grid over its range, then two finer grids between the best point's neighbours
    # (each level narrows the step 100-fold: b to ~1e-6 relative, in three vectorised passes)
    bs = np.geomspace(b_bounds[0], b_bounds[1], grid)
    for level in range(3):
        sse = profile(bs)[2]
        i = int(np.argmin(sse))
        if level < 2:
            bs = np.geomspace(bs[max(i - 1, 0)], bs[min(i + 1, len(bs) - 1)], 201)
    b = float(bs[i])
    A, c, s = (v[0] for v in profile(b))
    # a = A * C_ref^b, computed in logs (C_ref^b overflows nothing, but stays exact this way)
    a = float(A * math.exp(b * log_ref)) if A > 0 else 0.0
    fit = PowerLawFit(a=a, b=float(b), c=float(c), rms=float(math.sqrt(s / len(loss))),
                      n=len(loss))
    fit.warnings, fit.notes = _fit_warnings(fit, A, c_hi, b_bounds, len(np.unique(compute)))
    return fit


def _fit_warnings(fit, A, c_hi, b_bounds, distinct):
    """(warnings, notes) of a fit."""
    w, notes = [], []
    if distinct < MIN_RUNS:
        w.append(f"{distinct} distinct compute values for 3 parameters: the curve passes "
                 "through the points and says nothing about its error")
    if A <= 0:
        w.append("the loss does not fall with compute (a = 0): there is no trend to extrapolate")
        return w, notes
    if fit.b <= b_bounds[0] * 1.01 or fit.b >= b_bounds[1] / 1.01:
        w.append(f"the exponent b = {fit.b:.3g} is at the end of its range {b_bounds}")
    if fit.c <= 1e-3 * c_hi:
        notes.append("the floor c is at 0: the sweep resolves no irreducible loss, so the "
                     "fit is a pure power law, a straight line on log-log axes; a bend of the "
                     "true curve beyond the sweep (levelling off, or steepening while the runs "
                     "leave their initial plateau) is not in it")
    elif fit.c >= c_hi * (1 - 1e-9):
        w.append("the floor c equals the best measured loss: the sweep has already flattened, "
                 "so no further gain can be predicted")
    return w, notes


@dataclass
class Bootstrap:
    """Fits to resamples of the runs: params [m, 3] (a, b, c) and, when asked, the predicted
    loss at one compute [m]. Resamples with fewer than min_distinct distinct runs determine no
    fit with an error and are left out (`used` of `requested`)."""
    params: np.ndarray
    predictions: np.ndarray
    requested: int
    used: int

    def interval(self, values, level=0.95):
        if len(values) == 0:
            return (math.nan, math.nan)
        q = (1 - level) / 2 * 100
        lo, hi = np.percentile(values, [q, 100 - q])
        return (float(lo), float(hi))


def bootstrap_fit(compute, loss, n_boot=1000, predict_at=None, seed=0, min_distinct=3):
    """Case bootstrap over the runs: draw n runs with replacement, refit, repeat n_boot times.
    A resample needs 3 distinct runs for a fit (it then passes through them exactly); those
    are kept, since leaving out the resamples that move the curve most would narrow the
    intervals falsely."""
    compute, loss = _check_points(compute, loss)
    if not isinstance(n_boot, int) or n_boot < 1:
        raise FitError(f"{n_boot!r} resamples", "n_boot", "an integer >= 1")
    if len(np.unique(compute)) < min_distinct:
        raise FitError(f"{len(np.unique(compute))} distinct compute values", "compute",
                       f"at least {min_distinct} runs of different compute to resample")
    rng = np.random.default_rng(seed)
    params, preds = [], []
    for _ in range(n_boot):
        idx = rng.integers(0, len(compute), len(compute))
        if len(np.unique(compute[idx])) < min_distinct:
            continue
        f = fit_power_law(compute[idx], loss[idx])
        params.append((f.a, f.b, f.c))
        if predict_at is not None:
            preds.append(float(f.predict(predict_at)))
    return Bootstrap(params=np.array(params, dtype=np.float64).reshape(-1, 3),
                     predictions=np.array(preds, dtype=np.float64), requested=n_boot,
                     used=len(params))


# ------------------------------------------------------------------------------ the runs
SIZE_RE = re.compile(r"^(\d+)x(\d+)(?:x(\d+))?$")
TOKENS_RE = re.compile(r"^(\d+(?:\.\d*)?(?:e\d+)?)([kKmM]?)$")


def _size(text):
    """LxC or LxCxH -> (L, C, H); argparse type of --sizes and --target."""
    m = SIZE_RE.match(text.strip())
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1 or m.group(3) == "0":
        raise argparse.ArgumentTypeError(f"invalid value {text!r}")
    L, C = int(m.group(1)), int(m.group(2))
    if m.group(3) is not None:
        H = int(m.group(3))
        if C % H:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: {H} heads do not "
                                             f"divide {C} channels")
    else:
        H = max(h for h in range(1, max(1, C // HEAD_DIM) + 1) if C % h == 0)
    return L, C, H


_size.expected = "LxC or LxCxH: layers x channels (x heads dividing C), e.g. 3x96"


def _tokens(text):
    """A token count: 200000, 2e5, 200k or 1.5M; argparse type of --tokens."""
    m = TOKENS_RE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}")
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()]
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}")
    return int(round(value))


_tokens.expected = "token counts > 0 such as 200000, 2e5, 200k or 1.5M"


@dataclass
class Run:
    """One model of the sweep: its shape, its tokens (whole batches) and what it measured."""
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    steps: int
    tokens: int
    params: int
    flops_per_token: int
    compute: float
    val_loss: float = None
    seconds: float = None
    tokens_per_s: float = None

    @property
    def label(self):
        return f"{self.n_layer}x{self.n_embd}x{self.n_head}"


def _train_argv(args, data_dir, shape, steps, out):
    L, C, H = shape
    warmup = max(1, round(args.warmup_fraction * steps))
    return ["--data", data_dir, "--tokenizer", args.tokenizer, "--n-layer", str(L),
            "--n-embd", str(C), "--n-head", str(H), "--block-size", str(args.block_size),
            "--max-steps", str(steps), "--batch-size", str(args.batch_size),
            "--lr", repr(args.lr), "--warmup-steps", str(warmup), "--eval-interval", str(steps),
            "--eval-iters", str(args.eval_iters), "--ckpt-interval", str(steps), "--keep", "1",
            "--seed", str(args.seed), "--backend", args.backend, "--out", out, "--no-progress"]


def plan_run(args, data_dir, tok_vocab, shape, tokens, prefix=""):
    """The Run for a shape trained on `tokens` tokens (rounded up to whole batches), with its
    compute from the exact config train() will build; named by its shape and tokens."""
    from .train import build_config, parse_args as parse_train_args
    per_step = args.batch_size * args.block_size
    steps = max(1, math.ceil(tokens / per_step))
    targs = parse_train_args(_train_argv(args, data_dir, shape, steps, "unused"))
    cfg = build_config(targs, tok_vocab)
    fpt = cfg.flops_per_token()
    name = f"{prefix}{shape[0]}x{shape[1]}x{shape[2]}_{steps * per_step}"
    return Run(name=name, n_layer=shape[0], n_embd=shape[1], n_head=shape[2], steps=steps,
               tokens=steps * per_step, params=cfg.num_params(), flops_per_token=fpt,
               compute=float(fpt) * steps * per_step)


def prepare_sweep_data(args, data_dir):
    """Tokenize the data once (train's own cache in data_dir); the runs then read its shards.
    Returns the tokenizer's vocabulary size (None for a char tokenizer's unknown)."""
    from .train import parse_args as parse_train_args, prepare_run_data
    vocab = args.vocab_size if args.tokenizer == "bpe" else None     # char: the text's
    argv = ["--tokenizer", args.tokenizer, "--val-fraction", repr(args.val_fraction),
            "--out", args.out]
    if vocab is not None:
        argv += ["--vocab-size", str(vocab)]
    if args.data:
        argv += ["--data", args.data]
    if args.max_corpus_mb:
        argv += ["--max-corpus-mb", repr(args.max_corpus_mb)]
    targs = parse_train_args(argv)
    targs.json = args.json
    tok, train_tokens, val_tokens = prepare_run_data(targs, vocab, data_dir)
    return (tok.vocab_size if tok is not None else None), len(train_tokens), len(val_tokens)


def _same_run(saved, argv, source):
    """The same training arguments on the same data (the text, tokenizer and split that
    data/source.json records), wherever the sweep's folder is: a moved sweep reuses its runs."""
    def paths_out(a):
        a = list(a or ())
        for flag in ("--out", "--data"):
            if flag in a:
                del a[a.index(flag):a.index(flag) + 2]
        return a
    return (isinstance(saved, dict) and saved.get("data_source") == source
            and paths_out(saved.get("argv")) == paths_out(argv))


def data_source(data_dir):
    """What train's data cache says the shards in data_dir were made from."""
    with open(os.path.join(data_dir, "source.json")) as f:
        return json.load(f)


def train_run(args, data_dir, run, out, on_step):
    """Train one run (or reuse its finished result in out/summary.json when the run, its
    arguments and its data are the same) and fill in val_loss, seconds and tokens_per_s."""
    from .train import parse_args as parse_train_args, train
    argv = _train_argv(args, data_dir, (run.n_layer, run.n_embd, run.n_head), run.steps, out)
    source = data_source(data_dir)
    summary_path = os.path.join(out, "summary.json")
    if os.path.isfile(summary_path):
        try:
            with open(summary_path) as f:
                saved = json.load(f)
        except (OSError, json.JSONDecodeError):
            saved = None
        if _same_run(saved, argv, source) and saved.get("compute") == run.compute:
            run.val_loss, run.seconds, run.tokens_per_s = (saved["val_loss"], saved["seconds"],
                                                           saved["tokens_per_s"])
            on_step(run.steps, None, reused=True)
            return run
    if os.path.isdir(out):
        shutil.rmtree(out)                 # a run cut short, or one of other arguments
    os.makedirs(out)
    t0 = time.perf_counter()
    # train()'s own messages go to the run's log; the sweep's bar stays on the terminal
    with open(os.path.join(out, "train.log"), "w") as logf, \
            contextlib.redirect_stdout(logf), contextlib.redirect_stderr(logf):
        result = train(parse_train_args(argv), on_step=lambda step, loss: on_step(step, loss))
    run.seconds = time.perf_counter() - t0
    run.val_loss, run.tokens_per_s = float(result["final_val_loss"]), result["tokens_per_s"]
    if not math.isfinite(run.val_loss):
        raise ScratchError(f"run {run.name} ended with validation loss {run.val_loss}", out,
                           "a finite loss (a lower --lr)")
    with open(summary_path + ".tmp", "w") as f:
        json.dump({"argv": argv, "data_source": source, **asdict(run)}, f, indent=1)
    os.replace(summary_path + ".tmp", summary_path)
    return run


class SweepProgress:
    """One bar over every run's FLOPs (so its ETA weighs a large run as what it costs), with
    the current run, its tokens/s and its loss."""

    def __init__(self, runs, enabled):
        from tqdm import tqdm
        self.bar = tqdm(total=sum(r.compute for r in runs), unit="FLOP", unit_scale=True,
                        disable=not enabled, dynamic_ncols=True, file=sys.stderr,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} FLOP "
                                   "[{elapsed}<{remaining}{postfix}]")
        self.count = len(runs)

    def start(self, i, run):
        self.run, self.i, self.done_steps, self.t0 = run, i, 0, time.perf_counter()

    def step(self, step, loss, reused=False):
        new = step - self.done_steps
        self.done_steps = step
        self.bar.update(new * self.run.flops_per_token * self.run.tokens / self.run.steps)
        if reused:
            self.bar.set_postfix_str(f"run {self.i}/{self.count} {self.run.name}: reused")
            return
        dt = time.perf_counter() - self.t0
        tok_s = step * self.run.tokens / self.run.steps / dt if dt > 0 else 0.0
        self.bar.set_postfix_str(f"run {self.i}/{self.count} {self.run.name} step {step}/"
                                 f"{self.run.steps} loss {loss:.3f} {tok_s:,.0f} tok/s")

    def close(self):
        self.bar.close()


# ------------------------------------------------------------------------------ the plot
def plot_scaling(runs, target, fit, boot, path):
    """Loss against compute on log-log axes: the sweep's runs, the fit with its 95 % bootstrap
    band, the prediction with its interval, and the measured target run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    comp = np.array([r.compute for r in runs])
    loss = np.array([r.val_loss for r in runs])
    hi_c = max(comp.max(), target.compute) * 1.6
    grid = np.geomspace(comp.min() / 1.6, hi_c, 200)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    if boot is not None and boot.used:
        a, b, c = boot.params.T
        curves = a[:, None] * grid[None, :] ** -b[:, None] + c[:, None]
        lo, hi = np.percentile(curves, [2.5, 97.5], axis=0)
        ax.fill_between(grid, lo, hi, color="C0", alpha=0.15, lw=0,
                        label=f"95 % bootstrap band ({boot.used} fits)")
    ax.plot(grid, fit.predict(grid), "C0-", lw=1.5,
            label=f"fit  L = {fit.a:.3g}·C^-{fit.b:.3f} + {fit.c:.3f}")
    if fit.c > 0:
        ax.axhline(fit.c, color="C0", ls=":", lw=1, label=f"floor c = {fit.c:.3f}")
    ax.plot(comp, loss, "ko", ms=5, label="sweep runs (fitted)")
    for r in runs:
        ax.annotate(r.label, (r.compute, r.val_loss), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    pred = float(fit.predict(target.compute))
    yerr = None
    if boot is not None and len(boot.predictions):
        lo, hi = boot.interval(boot.predictions)
        yerr = [[max(pred - lo, 0.0)], [max(hi - pred, 0.0)]]
    ax.errorbar([target.compute], [pred], yerr=yerr, fmt="s", color="C1", ms=7, capsize=4,
                mfc="none", label=f"predicted {target.label}: {pred:.3f}")
    if target.val_loss is not None:
        ax.plot([target.compute], [target.val_loss], "*", color="C3", ms=12,
                label=f"measured {target.label}: {target.val_loss:.3f} (prediction "
                      f"{(pred - target.val_loss) / target.val_loss:+.1%} off)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs, flops_per_token × tokens)")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("validation loss vs compute: fit on the sweep, extrapolated", fontsize=10)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


# ------------------------------------------------------------------------------ the command
def _log(args, msg):
    print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)


def check_args(args):
    """What can be refused before any data is read."""
    if len(args.sizes) < MIN_RUNS:
        raise UsageError(f"{len(args.sizes)} sizes", "--sizes", f"at least {MIN_RUNS} (a fit "
                         "of 3 parameters needs a degree of freedom to show its error)")
    if args.tokens is not None and len(args.tokens) not in (1, len(args.sizes)):
        raise UsageError(f"{len(args.tokens)} token counts for {len(args.sizes)} sizes",
                         "--tokens", "one count for every size, or a single count for all")
    if args.block_size < 2:
        raise UsageError(f"{args.block_size}", "--block-size", "an integer >= 2")


def plan_sweep(args, data_dir, vocab):
    """(sweep runs sorted by compute, target run) from --sizes, --tokens, --target and
    --target-tokens, checked: distinct runs, enough distinct computes, a target beyond them."""
    check_args(args)
    sizes = args.sizes
    tokens = [None] * len(sizes) if args.tokens is None else \
        args.tokens * len(sizes) if len(args.tokens) == 1 else args.tokens
    runs = []
    for shape, n_tok in zip(sizes, tokens):
        if n_tok is None:
            n_tok = TOKENS_PER_PARAM * plan_run(args, data_dir, vocab, shape, 1).params
        runs.append(plan_run(args, data_dir, vocab, shape, n_tok))
    names = [r.name for r in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"run {twice[0]} is listed twice (tokens count in whole batches)",
                         "--sizes / --tokens", "each (size, tokens) pair once")
    runs.sort(key=lambda r: r.compute)
    distinct = len({r.compute for r in runs})
    if distinct < MIN_RUNS:
        raise UsageError(f"the runs have only {distinct} distinct computes", "--sizes / --tokens",
                         f"at least {MIN_RUNS} different values of size x tokens")
    largest = runs[-1]
    t_shape = args.target
    t_probe = plan_run(args, data_dir, vocab, t_shape, 1)
    if args.target_tokens is not None:
        t_tok = args.target_tokens
    elif args.tokens is not None and len(args.tokens) == 1:
        t_tok = args.tokens[0]                                   # the fixed-tokens family
    else:                                                        # the same tokens per parameter
        t_tok = round(t_probe.params * largest.tokens / largest.params)
    target = plan_run(args, data_dir, vocab, t_shape, t_tok, "target_")
    if target.compute <= largest.compute:
        raise UsageError(f"the target's compute {target.compute:.3g} FLOPs is not above the "
                         f"sweep's largest {largest.compute:.3g}", "--target / --target-tokens",
                         "a larger model or more tokens: the point is to extrapolate")
    return runs, target


def sweep(args):
    """Prepare the data, train the sweep and the target, fit, bootstrap, plot; the summary."""
    check_args(args)
    os.makedirs(args.out, exist_ok=True)
    data_dir = os.path.join(args.out, "data")
    vocab, n_train, n_val = prepare_sweep_data(args, data_dir)
    runs, target = plan_sweep(args, data_dir, vocab)
    ratio = target.compute / runs[-1].compute
    _log(args, f"data: {n_train:,} train / {n_val:,} val tokens in {data_dir}; vocabulary "
         f"{vocab}")
    _log(args, "sweep (sorted by compute):")
    for r in runs + [target]:
        _log(args, f"  {r.name:>24}: {r.params:>9,} params, {r.tokens:>10,} tokens "
             f"({r.tokens / r.params:5.1f}/param), {r.steps:>5} steps, C = {r.compute:.3g} FLOPs")
    _log(args, f"target: {ratio:.1f}x the largest run's compute"
         + ("" if 4 <= ratio <= 10 else " (outside the 4-10x the method is meant to test)"))

    progress = SweepProgress(runs + [target], args.progress)
    try:
        for i, r in enumerate(runs + [target], 1):
            progress.start(i, r)
            train_run(args, data_dir, r, os.path.join(args.out, "runs", r.name), progress.step)
            progress.bar.write(f"{r.name}: val loss {r.val_loss:.4f} "
                               f"({r.seconds:.0f} s)", file=sys.stderr if args.json else
                               sys.stdout)
            if r is runs[-1]:
                # the prediction is fixed before the target is trained
                fit = fit_power_law([x.compute for x in runs], [x.val_loss for x in runs])
                predicted = float(fit.predict(target.compute))
                progress.bar.write(f"predicted loss of {target.name}: {predicted:.4f}",
                                   file=sys.stderr if args.json else sys.stdout)
    finally:
        progress.close()

    comp = np.array([r.compute for r in runs])
    loss = np.array([r.val_loss for r in runs])
    boot = bootstrap_fit(comp, loss, args.bootstrap, predict_at=target.compute, seed=args.seed)
    pred_lo, pred_hi = boot.interval(boot.predictions)
    warnings = list(fit.warnings)
    if boot.used < max(20, args.bootstrap // 10):
        warnings.append(f"only {boot.used} of {boot.requested} bootstrap resamples held "
                        f"3 distinct runs: the intervals rest on few fits")
    half = (pred_hi - pred_lo) / 2 / predicted if boot.used else math.inf
    if not half <= MAX_INTERVAL_HALF_WIDTH:
        warnings.append(f"the prediction's 95 % bootstrap interval [{pred_lo:.3f}, {pred_hi:.3f}] "
                        f"is ±{half:.0%}: the runs do not pin the curve down at the target")
    measured = target.val_loss
    rel = (predicted - measured) / measured
    plot_path = os.path.join(args.out, "scaling.png")
    plot_scaling(runs, target, fit, boot, plot_path)

    names = ("a", "b", "c")
    intervals = {k: boot.interval(boot.params[:, j]) for j, k in enumerate(names)}
    return {
        "fit": {"a": fit.a, "b": fit.b, "c": fit.c},
        "fit_interval_95": intervals,
        "fit_rms": fit.rms,
        "predicted_loss": predicted,
        "predicted_interval_95": [pred_lo, pred_hi],
        "measured_loss": measured,
        "relative_error": rel,
        "within_5_percent": abs(rel) <= 0.05,
        "trustworthy": not warnings,
        "warnings": warnings,
        "notes": fit.notes,
        "compute_ratio": ratio,
        "bootstrap": {"requested": boot.requested, "used": boot.used},
        "runs": [asdict(r) for r in runs],
        "target": asdict(target),
        "seconds": sum(r.seconds for r in runs + [target]),
        "plot": plot_path,
        "out": args.out,
    }


def report(args, s):
    f = s["fit"]
    iv = s["fit_interval_95"]
    _log(args, f"fit on {len(s['runs'])} runs: L(C) = a·C^-b + c with a = {f['a']:.4g} "
         f"[{iv['a'][0]:.3g}, {iv['a'][1]:.3g}], b = {f['b']:.4f} [{iv['b'][0]:.3f}, "
         f"{iv['b'][1]:.3f}], c = {f['c']:.4f} [{iv['c'][0]:.3f}, {iv['c'][1]:.3f}] (95 % "
         f"bootstrap, {s['bootstrap']['used']} fits); rms residual {s['fit_rms']:.4f}")
    lo, hi = s["predicted_interval_95"]
    _log(args, f"target {s['target']['name']} ({s['compute_ratio']:.1f}x the largest compute): "
         f"predicted {s['predicted_loss']:.4f} [{lo:.4f}, {hi:.4f}], measured "
         f"{s['measured_loss']:.4f}: relative error {s['relative_error']:+.2%}"
         f" ({'within' if s['within_5_percent'] else 'outside'} 5 %)")
    if s["warnings"]:
        _log(args, "the fit is NOT trustworthy:")
        for w in s["warnings"]:
            _log(args, f"  - {w}")
    for note in s["notes"]:
        _log(args, f"note: {note}")
    _log(args, f"plot: {s['plot']}; runs in {os.path.join(s['out'], 'runs')}")


def add_arguments(p):
    p.add_argument("--sizes", nargs="+", type=_size, metavar="LxC[xH]",
                   default=[_size(s) for s in DEFAULT_SIZES],
                   help=f"the sweep's models: layers x channels (x heads; default C/{HEAD_DIM}) "
                   f"(default {' '.join(DEFAULT_SIZES)})")
    p.add_argument("--tokens", nargs="+", type=_tokens, metavar="N",
                   help=f"training tokens of each size (one count per size, or one for all; "
                   f"200000, 2e5, 200k, 1.5M); default {TOKENS_PER_PARAM} tokens per parameter")
    p.add_argument("--target", type=_size, default=_size(DEFAULT_TARGET), metavar="LxC[xH]",
                   help=f"the model whose loss is predicted, then measured (default "
                   f"{DEFAULT_TARGET})")
    p.add_argument("--target-tokens", type=_tokens, metavar="N",
                   help="its tokens (default: the single --tokens count, else the largest "
                   "run's tokens per parameter)")
    p.add_argument("--data", help="text file or folder (default: the Python standard "
                   "library's .py sources on this machine)")
    p.add_argument("--tokenizer", default="bpe", choices=("bpe", "char"))
    p.add_argument("--vocab-size", type=positive_int, default=512,
                   help="BPE vocabulary (default 512, as the mini preset)")
    p.add_argument("--max-corpus-mb", type=positive_float, default=None)
    p.add_argument("--val-fraction", type=open_fraction, default=0.1)
    p.add_argument("--block-size", type=positive_int, default=128, help="context (default 128)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--lr", type=positive_float, default=2e-3,
                   help="peak learning rate of every run (default 2e-3), cosine-decayed to a "
                   "tenth over each run's own length")
    p.add_argument("--warmup-fraction", type=open_fraction, default=0.05,
                   help="warmup steps as a fraction of each run's steps (default 0.05)")
    p.add_argument("--eval-iters", type=positive_int, default=40,
                   help="validation batches for each run's final loss (default 40)")
    p.add_argument("--bootstrap", type=positive_int, default=1000,
                   help="bootstrap resamples of the runs (default 1000)")
    p.add_argument("--backend", default="numpy", choices=("auto", "numpy", "host", "cuda"))
    p.add_argument("--seed", type=nonneg_int, default=1337)
    p.add_argument("--out", default="runs/scaling", help="output folder (default runs/scaling)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--json", action="store_true", help="last line: a JSON summary")


def parse_args(argv):
    p = ArgumentParser(prog="scratchgpt scaling")
    add_arguments(p)
    return p.parse_args(argv)


def run(args):
    summary = sweep(args)
    report(args, summary)
    if args.json:
        print(json.dumps(summary))
    return 0


def register(sub):
    p = sub.add_parser("scaling", help="predict a run's loss from a sweep of small runs, then "
                       "run it", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)
