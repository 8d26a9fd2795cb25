"""GRU vs GPT on the default corpus: the same parameter count, the same tokens, the same optimizer.

    PYTHONPATH=python python3 benchmarks/gru_vs_gpt.py --steps 600 --out runs/gru_vs_gpt \
        --docs docs/gru_vs_gpt

1. `scratchgpt train --preset mini` (the GPT: 4 layers, 128 wide, 875,264 parameters) on the
   default corpus, which also tokenizes it;
2. `scratchgpt train --arch gru --n-layer 4 --n-embd 180` (874,440 parameters) on the GPT run's
   own token shards, with the same seed: the sampler draws the very same windows, step by step;
3. both final checkpoints scored on the same held-out windows, loss per context position
   (position t predicts token t+1 from t+1 tokens of context; both models start each window
   empty: no KV cache, a zero GRU state).

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


def plot(results, positions, docs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(docs, exist_ok=True)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        val = [h for h in r["history"] if "val_loss" in h]
        label = f"{name} ({r['summary']['params']:,} params)"
        a.plot([h["step"] for h in val], [h["val_loss"] for h in val], "o-", ms=3, label=label)
        b.plot([h["train_s"] for h in val], [h["val_loss"] for h in val], "o-", ms=3, label=label)
    a.set_xlabel("step (16 x 128 tokens)")
    b.set_xlabel("training time (s, 2-core CPU, NumPy float32)")
    for ax in (a, b):
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("GRU vs GPT on the default corpus: same parameters, same tokens")
    fig.tight_layout()
    fig.savefig(os.path.join(docs, "gru_vs_gpt_loss.png"), dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, loss in positions.items():
        line, = ax.plot(np.arange(1, len(loss) + 1), loss, lw=0.8, alpha=0.5)
        centres = [np.sqrt(lo * hi) for lo, hi in BINS if hi <= len(loss)]
        ax.plot(centres, list(binned(loss).values()), "o-", color=line.get_color(),
                label=f"{name} (dots: means over 1, 2-4, 5-16, 17-64, 65-128)")
    ax.set_xscale("log")
    ax.set_xlabel("tokens of context (position + 1)")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title("Loss vs context position (final checkpoints)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(docs, "gru_vs_gpt_position.png"), dpi=100)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--eval-interval", type=int, default=50)
    p.add_argument("--eval-iters", type=int, default=10)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--batch-size", type=int, default=16, help="of the position evaluation")
    p.add_argument("--position-batches", type=int, default=40)
    p.add_argument("--out", default="runs/gru_vs_gpt")
    p.add_argument("--docs", default="docs/gru_vs_gpt")
    p.add_argument("--reuse", action="store_true", help="keep the training runs already in --out "
                   "(their result.json); evaluate, time and plot again")
    args = p.parse_args()
    results = {"GPT": train("gpt", [], args)}
    data = os.path.join(args.out, "gpt", "data")          # the GRU reads the GPT's own shards
    results["GRU"] = train("gru", ["--arch", "gru", *GRU_SIZE, "--data", data], args)
    val = load_split(data, "val")
    positions = {name: position_losses(r["summary"]["checkpoint"], val, args)
                 for name, r in results.items()}
    plot(results, positions, args.docs)
    summary = {name: {"params": r["summary"]["params"], "final_val_loss": r["summary"]["final_val_loss"],
                      "tokens_per_s": r["summary"]["tokens_per_s"], "train_s": r["history"][-1]["train_s"],
                      "tokens": args.steps * 16 * 128, "wall_s": r["wall_s"],
                      "load_average_before": r["load_before"], "load_average_after": r["load_after"],
                      "position_loss": [float(v) for v in positions[name]],
                      "position_loss_bins": binned(positions[name]),
                      "val_curve": [(h["step"], h["train_s"], h["val_loss"]) for h in r["history"] if "val_loss" in h]}
               for name, r in results.items()}
    before = load_average()
    summary["throughput_alternating"] = {**throughput(args), "load_average_before": before,
                                         "load_average_after": load_average()}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
