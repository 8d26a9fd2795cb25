"""How many gradients fp16 loses to underflow, without and with loss scaling.

    python benchmarks/precision_underflow.py                       # mini at init, one batch
    python benchmarks/precision_underflow.py --ckpt runs/precision/fp32 --data-dir runs/precision/data

One batch goes through the same weights twice: the fp32 model, and the fp16 model (fp16
storage, fp32 masters and accumulation, precision.py) whose loss gradient is multiplied by
each loss scale in turn. For every activation gradient an op hands on (dx, rounded to fp16
once, where the op's fp32 value is known) the table counts the elements whose fp32 value is
not zero but rounds to 0 (flushed), or to an fp16 subnormal (|x| < 2^-14: fewer than 11
significant bits), or overflows to Inf. For the parameter gradients (fp32 sums of fp16
activation gradients, then divided by the scale) it counts the elements that are 0 where the
fp32 model's are not, and the relative error of the whole gradient against the fp32 model's;
and, for comparison, the elements that would flush if the fp32 model's own parameter gradients
were stored in fp16 (|g * scale| < 2^-25) -- what a recipe without fp32 gradients would lose.

With --ckpt of a training run (its AdamW moments too) it also measures why the masters are
fp32: one AdamW step at the learning rates given (--lrs) from the checkpoint, and the share of
the weights whose update would vanish if the weights themselves were stored in bf16 / fp16
(w + dw rounds back to w although dw is not 0), per kind of parameter.
"""
import argparse
import json
import os
import sys
from contextlib import contextmanager
from unittest import mock

import numpy as np

MIN_NORMAL = {"fp16": 2.0 ** -14, "bf16": 2.0 ** -126}
HALF_SUBNORMAL = {"fp16": 2.0 ** -25, "bf16": 2.0 ** -134}   # below: rounds to 0


@contextmanager
def recording_roundings(records):
    """Every rounding of an op's fp32 output to storage, as (fp32 value, rounded) pairs."""
    from scratchgpt.precision import StorageOp
    real = StorageOp._round

    def _round(self, out):
        r = real(self, out)
        if isinstance(out, np.ndarray) and out.dtype == np.float32:
            records.append((out, r))
        return r
    with mock.patch.object(StorageOp, "_round", _round):
        yield


def measure(cfg, params, idx, targets, scales, precision="fp16"):
    """Rows of the table (one per loss scale) for one batch, the weights `params` (fp32)."""
    from scratchgpt.model import GPT
    ref = GPT(cfg, dtype="float32")
    ref.load_params(params)
    ref.eval()
    ref.forward(idx, targets)
    g32 = ref.backward()
    model = GPT(cfg, precision=precision)
    model.load_params(params)
    model.eval()
    rows = []
    for scale in scales:
        model.forward(idx, targets)
        records = []
        with recording_roundings(records), np.errstate(over="ignore", invalid="ignore"):
            g = model.backward(loss_weight=scale)
        n = sum(a.size for a, _ in records)
        nonzero = sum(int(np.count_nonzero(a)) for a, _ in records)
        flushed = sum(int(np.count_nonzero((a != 0) & (r == 0))) for a, r in records)
        sub = sum(int(np.count_nonzero((r != 0) & (np.abs(r.astype(np.float32)) < MIN_NORMAL[precision])))
                  for _, r in records)
        inf = sum(int(np.count_nonzero(np.isinf(r.astype(np.float32)) & np.isfinite(a)))
                  for a, r in records)
        p_total = sum(v.size for v in g32.values())
        p_nonzero = sum(int(np.count_nonzero(v)) for v in g32.values())
        p_lost = sum(int(np.count_nonzero((g32[k] != 0) & (g[k] == 0))) for k in g32)
        would_flush = sum(int(np.count_nonzero((g32[k] != 0) &
                                               (np.abs(g32[k].astype(np.float64) * scale)
                                                < HALF_SUBNORMAL[precision]))) for k in g32)
        finite = all(np.isfinite(v).all() for v in g.values())
        with np.errstate(invalid="ignore", over="ignore"):
            num = sum(float(np.sum((g[k].astype(np.float64) / scale - g32[k]) ** 2)) for k in g32)
        den = sum(float(np.sum(g32[k].astype(np.float64) ** 2)) for k in g32)
        rows.append({"precision": precision, "loss_scale": scale,
                     "activation_grads": n, "activation_grads_nonzero": nonzero,
                     "act_flushed_pct": 100.0 * flushed / max(nonzero, 1),
                     "act_subnormal_pct": 100.0 * sub / max(nonzero, 1),
                     "act_overflow": inf,
                     "param_grads": p_total,
                     "param_zero_pct": 100.0 * p_lost / max(p_nonzero, 1),
                     "param_fp16_storage_flush_pct": 100.0 * would_flush / max(p_nonzero, 1),
                     "param_rel_error": float(np.sqrt(num / den)) if finite else float("inf"),
                     "finite": bool(finite)})
    return rows


def vanishing_updates(model, opt_state, idx, targets, lrs):
    """Rows: for each learning rate, one AdamW step (fp32) from the saved moments, and the
    share of parameters (all; matrices; layer-norm weights) whose update is lost when the
    weight is stored in bf16 or fp16: round(w + dw) == round(w) while dw != 0."""
    from scratchgpt.optim import AdamW
    from scratchgpt.precision import round_to
    model.forward(idx, targets)
    grads = model.backward()
    rows = []
    for lr in lrs:
        params = {k: v.copy() for k, v in model.params.items()}
        opt = AdamW(params, model.be, lr=lr)
        opt.load_state_dict({**opt_state, "m": {k: v.copy() for k, v in opt_state["m"].items()},
                             "v": {k: v.copy() for k, v in opt_state["v"].items()}})
        opt.step({k: g.copy() for k, g in grads.items()}, max_grad_norm=1.0)
        for precision in ("bf16", "fp16"):
            row = {"lr": lr, "precision": precision}
            groups = {"all": list(params),
                      "matrices": [k for k in params if params[k].ndim == 2],
                      "layer-norm weights": [k for k in params if "ln" in k and "weight" in k]}
            for name, keys in groups.items():
                moved = lost = 0
                for k in keys:
                    w, w1 = model.params[k], params[k]
                    d = w1 != w
                    moved += int(d.sum())
                    lost += int((d & (round_to(w1, precision) == round_to(w, precision))).sum())
                row[name] = 100.0 * lost / max(moved, 1)
            rows.append(row)
    return rows


def markdown_updates(rows):
    out = ["| learning rate | weights stored in | updates lost: all | matrices | layer-norm weights |",
           "|---:|---|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['lr']:g} | {r['precision']} | {r['all']:.1f} % | {r['matrices']:.1f} % "
                   f"| {r['layer-norm weights']:.1f} % |")
    return "\n".join(out)


def markdown(rows):
    out = ["| precision | loss scale | activation grads flushed to 0 | subnormal | overflow (Inf) "
           "| param grads lost (0 where fp32's are not) | rel. error of the param grads "
           "| param grads that fp16 storage would flush |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        scale = "1 (none)" if r["loss_scale"] == 1 else f"2^{int(np.log2(r['loss_scale']))}"
        err = f"{r['param_rel_error']:.2e}" if r["finite"] else "Inf (step skipped)"
        out.append(f"| {r['precision']} | {scale} | {r['act_flushed_pct']:.2f} % | "
                   f"{r['act_subnormal_pct']:.2f} % | {r['act_overflow']} | "
                   f"{r['param_zero_pct']:.2f} % | {err} | "
                   f"{r['param_fp16_storage_flush_pct']:.2f} % |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mini")
    p.add_argument("--ckpt", help="weights to measure at (default: the preset at init)")
    p.add_argument("--data-dir", help="a folder with val shards (default: random tokens)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--scales", default="0,8,16,24", help="log2 of the loss scales")
    p.add_argument("--lrs", default="2e-3,2e-4", help="--ckpt: learning rates of the AdamW "
                   "step whose vanishing updates are counted (default: mini's peak and final)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from scratchgpt.config import GPTConfig
    from scratchgpt.model import GPT
    m = opt_state = None
    if args.ckpt:
        from scratchgpt.checkpoint import load_model, read_tensors
        m, state, _, ckpt = load_model(args.ckpt, dtype="float32", precision="fp32")
        cfg, params = m.cfg, m.params
        moments = read_tensors(os.path.join(ckpt, "optimizer.safetensors"))
        opt_state = {**state["optimizer"], "m": {k: moments[f"m.{k}"] for k in params},
                     "v": {k: moments[f"v.{k}"] for k in params}}
    else:
        cfg = GPTConfig.preset(args.preset)
        params = GPT(cfg, dtype="float32", seed=args.seed).params
    rng = np.random.default_rng(args.seed)
    T = cfg.block_size
    if args.data_dir:
        from scratchgpt.data import BatchSampler, load_split
        idx, targets = BatchSampler(load_split(args.data_dir, "val"), args.batch_size, T,
                                    seed=args.seed).next_batch()
    else:
        tokens = rng.integers(0, cfg.vocab_size, (args.batch_size, T + 1))
        idx, targets = tokens[:, :-1], tokens[:, 1:]
    scales = [2.0 ** int(s) for s in args.scales.split(",")]
    rows = measure(cfg, params, idx, targets, scales) + measure(cfg, params, idx, targets, [1.0],
                                                                precision="bf16")
    print(markdown(rows))
    updates = []
    if opt_state is not None:
        updates = vanishing_updates(m, opt_state, idx, targets,
                                    [float(x) for x in args.lrs.split(",")])
        print()
        print(markdown_updates(updates))
    if args.json:
        print(json.dumps({"underflow": rows, "vanishing_updates": updates}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
