"""Mixed precision end to end: the same training run in fp32, bf16 and fp16, one figure.

    python benchmarks/precision_curves.py                         # mini, 300 steps, numpy
    python benchmarks/precision_curves.py --max-steps 50 --out runs/precision-short
    python benchmarks/precision_curves.py -- --batch-size 8       # more `scratchgpt train` flags

Each precision runs `scratchgpt train --preset PRESET --max-steps N --backend BACKEND --precision P
--out OUT/P` with the same seed, data and arguments (the tokenized data is shared through
OUT/data). Then OUT/precision.png holds the three loss curves (train per step, thin; validation
every eval interval, with markers), OUT/precision.json the summaries, and the Markdown table
printed at the end is the README's. A run whose final checkpoint is already there is read back,
not run again (--rerun runs it anew).
"""
import argparse
import json
import os
import shutil
import sys

PRECISIONS = ("fp32", "bf16", "fp16")


def run_one(precision, args, extra):
    from scratchgpt.checkpoint import list_checkpoints
    from scratchgpt.train import parse_args, read_history, train

    out = os.path.join(args.out, precision)
    done = [c for c in list_checkpoints(out) if c.endswith(f"ckpt_{args.max_steps:06d}")]
    if done and not args.rerun:
        print(f"{precision}: reading the finished run in {out}", file=sys.stderr)
        summary = None
    else:
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.makedirs(out)
        os.symlink(os.path.abspath(os.path.join(args.out, "data")), os.path.join(out, "data"))
        argv = ["--preset", args.preset, "--max-steps", str(args.max_steps), "--backend",
                args.backend, "--precision", precision, "--seed", str(args.seed), "--out", out,
                *([] if args.progress else ["--no-progress"]), *extra]
        print(f"{precision}: scratchgpt train {' '.join(argv)}", file=sys.stderr, flush=True)
        summary = train(parse_args(argv))
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
    history = read_history(os.path.join(out, "log.jsonl"), args.max_steps)
    if summary is None and os.path.isfile(os.path.join(out, "summary.json")):
        with open(os.path.join(out, "summary.json")) as f:
            summary = json.load(f)
    if summary is None:
        summary = {"final_val_loss": [h for h in history if "val_loss" in h][-1]["val_loss"],
                   "final_loss": history[-1]["loss"], "tokens_per_s": None,
                   "skipped_steps": history[-1].get("skipped_steps", 0),
                   "loss_scale": history[-1].get("loss_scale", 1.0)}
    return summary, history


def plot(runs, path, title):
    """Top: the loss curves. Bottom: each precision's loss minus fp32's at the same step
    (validation: markers; train: a 10-step running mean), where the differences show."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    colors = {"fp32": "black", "bf16": "tab:blue", "fp16": "tab:red"}
    fig, (ax, dx) = plt.subplots(2, 1, figsize=(8, 7), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 2]})
    base = runs.get("fp32")
    for p, (summary, history) in runs.items():
        steps = [h["step"] for h in history]
        ax.plot(steps, [h["loss"] for h in history], lw=0.6, alpha=0.45, color=colors[p])
        val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
        ax.plot(*zip(*val), "o-", ms=3.5, color=colors[p],
                label=f"{p}: val {summary['final_val_loss']:.4f}")
        if base is None or p == "fp32":
            continue
        ref = {h["step"]: h for h in base[1]}
        d = np.array([h["loss"] - ref[h["step"]]["loss"] for h in history if h["step"] in ref])
        k = min(10, len(d))
        smooth = np.convolve(d, np.ones(k) / k, mode="valid")
        dx.plot(steps[k - 1:len(smooth) + k - 1], smooth, lw=1, color=colors[p],
                label=f"{p} - fp32, train ({k}-step mean)")
        dv = [(s, v - ref[s]["val_loss"]) for s, v in val if "val_loss" in ref.get(s, {})]
        dx.plot(*zip(*dv), "o--", ms=3.5, color=colors[p], alpha=0.8, label=f"{p} - fp32, val")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(title="validation (markers), train (thin)")
    dx.axhline(0, color="black", lw=0.6)
    dx.set_xlabel("step")
    dx.set_ylabel("difference from fp32")
    dx.grid(alpha=0.3)
    dx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(runs):
    base = runs["fp32"][0]["final_val_loss"] if "fp32" in runs else None
    rows = ["| precision | final val loss | vs fp32 | final train loss | tokens/s | skipped steps "
            "| final loss scale |", "|---|---:|---:|---:|---:|---:|---:|"]
    for p, (s, _) in runs.items():
        diff = f"{100 * (s['final_val_loss'] / base - 1):+.2f} %" if base else "-"
        tps = f"{s['tokens_per_s']:,.0f}" if s.get("tokens_per_s") else "-"
        scale = f"{s['loss_scale']:g}" if p == "fp16" else "-"
        skipped = str(s.get("skipped_steps", 0)) if p == "fp16" else "-"
        rows.append(f"| {p} | {s['final_val_loss']:.4f} | {diff} | {s['final_loss']:.4f} | "
                    f"{tps} | {skipped} | {scale} |")
    return "\n".join(rows)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mini")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--backend", default="numpy")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--precisions", default=",".join(PRECISIONS),
                   help="comma-separated, default fp32,bf16,fp16")
    p.add_argument("--out", default=os.path.join("runs", "precision"))
    p.add_argument("--rerun", action="store_true", help="run finished runs again")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    os.makedirs(os.path.join(args.out, "data"), exist_ok=True)
    runs = {}
    for precision in args.precisions.split(","):
        runs[precision] = run_one(precision, args, extra)
    figure = os.path.join(args.out, "precision.png")
    plot(runs, figure, f"{args.preset}, {args.max_steps} steps, {args.backend} backend")
    with open(os.path.join(args.out, "precision.json"), "w") as f:
        json.dump({p: s for p, (s, _) in runs.items()}, f, indent=1, default=str)
    print(table(runs))
    print(f"figure: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
