"""The cost of compression on a trained model: validation loss vs bits and vs sparsity, with the
file size on disk. Runs `scratchgpt compress` for each setting below and `scratchgpt eval` on the
source and every result (the same validation tokens for all), then writes results.json, a
Markdown table (table.md) and a plot (compression.png) into --out.

    python3 benchmarks/compress_sweep.py --ckpt runs/mini --out runs/sweep-mini --recover-steps 200

Settings: fp32 (the source); int8 RTN and GPTQ; int4 RTN and GPTQ at group sizes 32 / 64 / 128;
50 % and 70 % unstructured magnitude pruning and 2:4, each without and with --recover-steps of
masked AdamW, and the same steps with nothing pruned (what the fine-tuning alone gives).
"""
import argparse
import io
import json
import os
import sys
import time
from contextlib import redirect_stdout

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from scratchgpt.cli import main as cli  # noqa: E402


def settings(recover):
    out = [("int8 RTN", "int8-rtn", ["--quantize", "int8"]),
           ("int8 GPTQ", "int8-gptq", ["--quantize", "int8", "--method", "gptq"])]
    for g in (32, 64, 128):
        out.append((f"int4 RTN g{g}", f"int4-rtn-g{g}", ["--quantize", "int4", "--group-size", str(g)]))
        out.append((f"int4 GPTQ g{g}", f"int4-gptq-g{g}",
                    ["--quantize", "int4", "--group-size", str(g), "--method", "gptq"]))
    # the recovery's own share: the same masked AdamW steps with nothing pruned (an undertrained
    # model gains from any further training)
    out.append((f"fp32 + {recover} steps", "p0-rec", ["--prune", "0", "--recover-steps", str(recover)]))
    for label, tag, prune in (("50 %", "p50", "0.5"), ("70 %", "p70", "0.7"), ("2:4", "p24", "2:4")):
        out.append((f"prune {label}", tag, ["--prune", prune]))
        out.append((f"prune {label} + {recover} steps", f"{tag}-rec",
                    ["--prune", prune, "--recover-steps", str(recover)]))
    return out


def run_json(argv):
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = cli(argv)
    if code != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {code}")
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def plot(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    base = rows[0]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    bits = [r for r in rows if r["kind"] in ("fp32", "quant")]
    for method, marker in (("RTN", "o"), ("GPTQ", "s")):
        pts = [r for r in bits if method in r["label"]]
        ax1.scatter([r["bits_per_weight"] for r in pts], [r["val_loss"] for r in pts], marker=marker,
                    label=method, s=40)
        for r in pts:
            ax1.annotate(r["label"].split()[-1] if "int4" in r["label"] else "int8",
                         (r["bits_per_weight"], r["val_loss"]), fontsize=7, xytext=(3, 3),
                         textcoords="offset points")
    ax1.axhline(base["val_loss"], color="k", lw=0.8, ls="--", label="fp32")
    ax1.set_xlabel("bits per block weight (scales and zero points included)")
    ax1.set_ylabel("validation loss (nats/token)")
    ax1.set_title("loss vs bits")
    ax1.legend()
    for kind, marker, name in (("magnitude", "o", "unstructured"), ("2:4", "^", "2:4")):
        for rec, fill in ((False, "none"), (True, None)):
            pts = [r for r in rows if r["kind"] == "prune" and r["prune_kind"] == kind
                   and r["recovered"] == rec]
            ax2.scatter([r["sparsity"] for r in pts], [r["val_loss"] for r in pts], marker=marker,
                        s=50, facecolors=fill, edgecolors="C1" if rec else "C0",
                        color="C1" if rec else "C0",
                        label=f"{name}{' + recovery' if rec else ''}")
    ax2.axhline(base["val_loss"], color="k", lw=0.8, ls="--", label="fp32")
    ax2.set_xlabel("sparsity of the block matrices")
    ax2.set_ylabel("validation loss (nats/token)")
    ax2.set_title("loss vs sparsity")
    ax2.legend(fontsize=8)
    for r in rows:
        ax = ax2 if r["kind"] == "prune" else ax1
        if r["kind"] == "fp32":
            continue
        x = r["sparsity"] if r["kind"] == "prune" else r["bits_per_weight"]
        ax.annotate(f"{r['size_bytes'] / 1e6:.2f} MB", (x, r["val_loss"]), fontsize=6,
                    xytext=(3, -9), textcoords="offset points", color="0.4")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--recover-steps", type=int, default=200)
    p.add_argument("--eval-tokens", type=int, default=65536)
    p.add_argument("--calib-tokens", type=int, default=8192)
    p.add_argument("--reuse", action="store_true",
                   help="keep the results of settings already in --out (same flags assumed)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    base = run_json(["eval", "--ckpt", args.ckpt, "--json", "--backend", "numpy",
                     "--max-tokens", str(args.eval_tokens)])
    n_block = None
    rows = [{"label": "fp32", "tag": "fp32", "kind": "fp32", "bits_per_weight": 32.0, **base}]
    for label, tag, flags in settings(args.recover_steps):
        out = os.path.join(args.out, tag)
        t0 = time.time()
        extra = ["--calib-tokens", str(args.calib_tokens)] if "gptq" in flags else []
        done = os.path.join(out, "report.json")
        if args.reuse and os.path.isfile(done):           # an earlier sweep's result
            report = json.load(open(done))
            seconds = report["seconds"]
        else:
            report = run_json(["compress", "--ckpt", args.ckpt, "--out", out, "--json",
                               "--eval-tokens", str(args.eval_tokens), *flags, *extra])
            seconds = time.time() - t0
        layers = json.load(open(os.path.join(out, "report.json")))["layers"]
        n_block = sum(r["shape"][0] * r["shape"][1] for r in layers)
        row = {"label": label, "tag": tag, "seconds": seconds, **report["after"],
               "flags": " ".join(flags)}
        if "--quantize" in flags:
            qbytes = 0
            from safetensors import safe_open
            with safe_open(os.path.join(out, "model.safetensors"), "np") as f:
                for k in f.keys():
                    if k.endswith((".qweight", ".scale", ".zero")):
                        qbytes += f.get_tensor(k).nbytes
            row.update(kind="quant", bits_per_weight=8 * qbytes / n_block)
        else:
            row.update(kind="prune", prune_kind="2:4" if "2:4" in flags else "magnitude",
                       sparsity=sum((r["sparsity"] or 0) * r["shape"][0] * r["shape"][1]
                                    for r in layers) / n_block,
                       recovered="--recover-steps" in flags)
        row["loss_change_pct"] = 100 * (row["val_loss"] / base["val_loss"] - 1)
        rows.append(row)
        print(f"{label:28s} loss {row['val_loss']:.4f} ({row['loss_change_pct']:+.2f} %)  "
              f"{row['size_bytes']:>10,} B  {seconds:5.0f} s", flush=True)
    load = os.getloadavg()[0]
    result = {"ckpt": os.path.abspath(args.ckpt), "eval_tokens": base["tokens"],
              "recover_steps": args.recover_steps, "calib_tokens": args.calib_tokens,
              "block_weights": n_block, "load_1min_at_end": load, "rows": rows}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = ["| setting | val loss | vs fp32 | bits / block weight | sparsity | model.safetensors |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['val_loss']:.4f} | "
                     f"{'' if r['kind'] == 'fp32' else format(r['loss_change_pct'], '+.2f') + ' %'} | "
                     f"{r.get('bits_per_weight', 32.0):.2f} | "
                     f"{format(r['sparsity'], '.0%') if r.get('sparsity') is not None else '-'} | "
                     f"{r['size_bytes']:,} B |")
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(rows, os.path.join(args.out, "compression.png"),
         f"{os.path.basename(os.path.abspath(args.ckpt))}: validation loss on {base['tokens']:,} "
         f"tokens; file size beside each point")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
