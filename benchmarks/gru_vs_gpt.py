"""GRU vs GPT on the default corpus: the same parameter count, the same tokens, the same optimizer.

    PYTHONPATH=python python3 benchmarks/gru_vs_gpt.py --steps 600 --gpt-lrs 1e-3,2e-3,3.5e-3,6e-3 \
        --gru-lrs 2e-3,6e-3,1.2e-2,2.4e-2 --out runs/gru_vs_gpt --docs docs/gru_vs_gpt

For each model, at each of its peak learning rates (--gpt-lrs, --gru-lrs; the rest of the
schedule as `scratchgpt train`'s defaults):
- `scratchgpt train --preset mini` (the GPT: 4 layers, 128 wide, 875,264 parameters); the first
  run tokenizes the default corpus, every other run reads its token shards;
- `scratchgpt train --arch gru --n-layer 4 --n-embd 180` (874,440 parameters).
With one seed, every run draws the very same 16 x 128 windows, step by step. Then the best run
of each model (lowest final validation loss) is scored on the same held-out windows, loss per
context position (position t predicts token t+1 from t+1 tokens of context; both models start
each window empty: no KV cache, a zero GRU state), and both models' training throughput is
measured in alternation (whatever else loads the machine loads both alike).

Writes OUT/summary.json and, in --docs, gru_vs_gpt_loss.png (validation loss vs step and vs
training time) and gru_vs_gpt_position.png (loss vs context position). Timings are the training
steps' own (train_s in log.jsonl: no evaluation, no checkpoints); the machine's load average is
recorded beside them.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

from scratchgpt.checkpoint import load_model  # noqa: E402
from scratchgpt.data import BatchSampler, load_split  # noqa: E402

GRU_SIZE = ("--n-layer", "4", "--n-embd", "180")
BASE_LR = "2e-3"           # scratchgpt train's default


def load_average():
    return os.getloadavg()


def train(name, extra, args):
    out = os.path.join(args.out, name)
    if args.reuse and os.path.isfile(os.path.join(out, "result.json")):
        with open(os.path.join(out, "result.json")) as f:      # the run this script made before
            return json.load(f)
    cmd = [sys.executable, "-m", "scratchgpt.cli", "train", "--preset", "mini", "--backend", "numpy",
           "--dtype", "float32", "--max-steps", str(args.steps), "--eval-interval",
           str(args.eval_interval), "--eval-iters", str(args.eval_iters), "--ckpt-interval",
           str(args.steps), "--seed", str(args.seed), "--out", out, "--json", *extra]
    before = load_average()
    t0 = time.time()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True,
                       env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "python")})
    if r.returncode:
        raise SystemExit(f"{name}: scratchgpt train failed ({r.returncode})")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    result = {"summary": summary, "history": rows, "wall_s": time.time() - t0,
              "load_before": before, "load_after": load_average()}
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f)
    return result


def position_losses(ckpt, tokens, args):
    """Mean loss at each context position over the same held-out windows: [block_size]."""
    from tqdm import tqdm
    model, _, _, _ = load_model(ckpt, backend="numpy")
    model.eval()
    sampler = BatchSampler(tokens, args.batch_size, model.cfg.block_size, seed=args.seed + 7)
    total = np.zeros(model.cfg.block_size)
    for _ in tqdm(range(args.position_batches), desc=f"positions {os.path.basename(os.path.dirname(ckpt))}",
                  unit="batch", file=sys.stderr):
        x, y = sampler.next_batch()
        logits, _ = model.forward(x)
        model._caches = None
        z = logits.astype(np.float64)
        z -= z.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        total += -np.take_along_axis(logp, y[..., None], axis=-1)[..., 0].mean(axis=0)
    return total / args.position_batches


def throughput(args, rounds=5, steps=4):
    """Training tokens/s of both models measured in alternation (GPT, GRU, GPT, ...: whatever
    else loads the machine loads both alike): forward, backward and the AdamW step on one
    16 x 128 batch, the median of `rounds` rounds of `steps` steps each."""
    from scratchgpt.config import GPTConfig
    from scratchgpt.gru_model import GRUConfig, GRULM
    from scratchgpt.model import GPT
    from scratchgpt.optim import AdamW
    gpt_cfg = GPTConfig.preset("mini")
    models = {"GPT": GPT(gpt_cfg, dtype="float32"),
              "GRU": GRULM(GRUConfig(vocab_size=gpt_cfg.vocab_size, block_size=gpt_cfg.block_size,
                                     n_layer=4, n_embd=180), dtype="float32")}
    opts = {k: AdamW(m.params, m.be, lr=1e-3) for k, m in models.items()}
    x = np.random.default_rng(0).integers(0, gpt_cfg.vocab_size, (16, gpt_cfg.block_size))
    rates = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                m.forward(x, x)
                opts[k].step(m.backward(), lr=1e-3)
            rates[k].append(steps * x.size / (time.perf_counter() - t0))
    return {k: {"median_tokens_per_s": float(np.median(v)), "rounds": v} for k, v in rates.items()}


BINS = ((1, 1), (2, 4), (5, 16), (17, 64), (65, 128))


def binned(loss):
    """Mean loss over context lengths lo..hi (1-based, inclusive) for each bin of BINS."""
    return {f"{lo}-{hi}" if lo != hi else str(lo): float(np.mean(loss[lo - 1:hi]))
            for lo, hi in BINS if hi <= len(loss)}


def plot(results, best, positions, docs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(docs, exist_ok=True)
    colours = {"GPT": "tab:blue", "GRU": "tab:orange"}
    fig, (s, a, b) = plt.subplots(1, 3, figsize=(15, 4))
    for arch in ("GPT", "GRU"):
        runs = sorted(((float(k.split(" lr ")[1]), r) for k, r in results.items() if k.startswith(arch)),
                      key=lambda x: x[0])
        s.plot([lr for lr, _ in runs], [r["summary"]["final_val_loss"] for _, r in runs], "o-",
               color=colours[arch], label=f"{arch} ({runs[0][1]['summary']['params']:,} params)")
        r = results[best[arch]]
        val = [h for h in r["history"] if "val_loss" in h]
        style = dict(color=colours[arch], marker="o", ms=3, label=best[arch])
        a.plot([h["step"] for h in val], [h["val_loss"] for h in val], **style)
        b.plot([h["train_s"] for h in val], [h["val_loss"] for h in val], **style)
    s.set_xscale("log")
    s.set_xlabel("peak learning rate")
    s.set_ylabel("final validation loss (nats/token)")
    s.set_title("600 steps at each learning rate")
    a.set_xlabel("step (16 x 128 tokens)")
    b.set_xlabel("training time (s, shared 2-core CPU, NumPy float32)")
    a.set_title("each model at its best learning rate")
    b.set_title("the same runs against training time")
    for ax in (s, a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in (a, b):
        ax.set_ylabel("validation loss (nats/token)")
    fig.suptitle("GRU vs GPT on the default corpus: same parameters, same tokens, same optimizer")
    fig.tight_layout()
    fig.savefig(os.path.join(docs, "gru_vs_gpt_loss.png"), dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, loss in positions.items():
        line, = ax.plot(np.arange(1, len(loss) + 1), loss, lw=0.8, alpha=0.5,
                        color={"GPT": "tab:blue", "GRU": "tab:orange"}[name.split()[0]])
        centres = [np.sqrt(lo * hi) for lo, hi in BINS if hi <= len(loss)]
        ax.plot(centres, list(binned(loss).values()), "o-", color=line.get_color(),
                label=f"{name} (dots: means over 1, 2-4, 5-16, 17-64, 65-128)")
    ax.set_xscale("log")
    ax.set_xlabel("tokens of context (position + 1)")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title("Loss vs context position (final checkpoints, each model at its best lr)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(docs, "gru_vs_gpt_position.png"), dpi=100)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--gpt-lrs", default="1e-3,2e-3,3.5e-3,6e-3",
                   help="the GPT's peak learning rates, comma-separated (default 1e-3,2e-3,3.5e-3,6e-3)")
    p.add_argument("--gru-lrs", default="2e-3,6e-3,1.2e-2,2.4e-2",
                   help="the GRU's peak learning rates (default 2e-3,6e-3,1.2e-2,2.4e-2); the comparison "
                   "by position takes each model at its best")
    p.add_argument("--eval-interval", type=int, default=50)
    p.add_argument("--eval-iters", type=int, default=10)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--batch-size", type=int, default=16, help="of the position evaluation")
    p.add_argument("--position-batches", type=int, default=100)
    p.add_argument("--out", default="runs/gru_vs_gpt")
    p.add_argument("--docs", default="docs/gru_vs_gpt")
    p.add_argument("--reuse", action="store_true", help="keep the training runs already in --out "
                   "(their result.json); evaluate, time and plot again")
    args = p.parse_args()
    # the GPT at train's default learning rate runs first and tokenizes; the others read its shards
    data = os.path.join(args.out, "gpt", "data")
    results = {f"GPT lr {BASE_LR}": train("gpt", ["--lr", BASE_LR], args)}
    for arch, lrs in (("GPT", args.gpt_lrs), ("GRU", args.gru_lrs)):
        for lr in lrs.split(","):
            if (arch, lr) == ("GPT", BASE_LR):
                continue
            name = arch.lower() + ("" if lr == BASE_LR else f"_lr{lr}")
            extra = ["--lr", lr, "--data", data] + (["--arch", "gru", *GRU_SIZE] if arch == "GRU" else [])
            results[f"{arch} lr {lr}"] = train(name, extra, args)
    best = {arch: min((k for k in results if k.startswith(arch)),
                      key=lambda k: results[k]["summary"]["final_val_loss"]) for arch in ("GPT", "GRU")}
    val = load_split(data, "val")
    positions = {best[arch]: position_losses(results[best[arch]]["summary"]["checkpoint"], val, args)
                 for arch in ("GPT", "GRU")}
    plot(results, best, positions, args.docs)
    summary = {name: {"params": r["summary"]["params"], "final_val_loss": r["summary"]["final_val_loss"],
                      "tokens_per_s": r["summary"]["tokens_per_s"], "train_s": r["history"][-1]["train_s"],
                      "tokens": args.steps * 16 * 128, "wall_s": r["wall_s"],
                      "load_average_before": r["load_before"], "load_average_after": r["load_after"],
                      "val_curve": [(h["step"], h["train_s"], h["val_loss"]) for h in r["history"] if "val_loss" in h]}
               for name, r in results.items()}
    for name, loss in positions.items():
        summary[name].update(position_loss=[float(v) for v in loss], position_loss_bins=binned(loss))
    summary["best"] = best
    before = load_average()
    summary["throughput_alternating"] = {**throughput(args), "load_average_before": before,
                                         "load_average_after": load_average()}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
