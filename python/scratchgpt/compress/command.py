"""`scratchgpt compress` and the work behind `scratchgpt eval`.

    scratchgpt compress --ckpt runs/mini --out runs/mini-int8 --quantize int8
    scratchgpt compress --ckpt runs/mini --out runs/mini-int4 --quantize int4 --group-size 64 --method gptq
    scratchgpt compress --ckpt runs/mini --out runs/mini-p50 --prune 0.5 --recover-steps 200
    scratchgpt compress --ckpt runs/mini --out runs/mini-24q --prune 2:4 --recover-steps 200 --quantize int8

What is compressed: the four matrices of every block (attn.c_attn, attn.c_proj, mlp.c_fc,
mlp.c_proj), where nearly all the weights of a GPT are. Left in float32, whatever the flags:
the token embedding wte (a lookup table that is also the tied output projection: the logits'
error would be the embedding's, for 7 % of the mini model's weights), the position embedding,
the layer norms and the biases (a few thousand numbers whose error reaches every token).

Order: prune (magnitude or 2:4), then recover (masked AdamW on the training tokens, the pruned
weights held at zero), then quantise (RTN, or GPTQ with the masks kept: pruned weights take the
exact zero code). A quantised model is not trained further.
"""
import argparse
import json
import os
import shutil
import time

import numpy as np

from ..errors import UsageError
from ..reference import quant_linear as ql
from . import evaluate as ev
from . import prune as pr
from . import quantize as qz
from .store import COMPRESSION_FILE, FORMAT, encode_layer, is_compressed

TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def target_names(cfg):
    """The compressed weights, in forward order."""
    return [f"h.{i}.{t}.weight" for i in range(cfg.n_layer) for t in TARGETS]


# ---------------------------------------------------------------------------- checks
def check_args(args, cfg):
    """Every refusal before any work: one UsageError each."""
    if args.quantize == "int4":
        widths = sorted({cfg.n_embd, 4 * cfg.n_embd})
        for K in widths:
            try:
                ql.check_group_size(args.group_size, K, "--group-size")
            except ValueError as e:
                raise UsageError(str(e).split(": ", 1)[1], f"--group-size {args.group_size}",
                                 f"an even number dividing every layer's input width {widths} "
                                 "(e.g. 32, 64, 128)") from None
    if args.method == "gptq" and args.quantize is None:
        raise UsageError("GPTQ is a quantiser", "--method gptq", "--quantize int8|int4 as well")
    if args.recover_steps and args.prune is None:
        raise UsageError("recovery fine-tunes a pruned model", f"--recover-steps {args.recover_steps}",
                         "--prune S|2:4 as well")
    if args.quantize is None and args.prune is None:
        raise UsageError("nothing to do", "--quantize / --prune", "--quantize int8|int4 and / or "
                         "--prune S|2:4")
    if args.prune_global and (args.prune is None or args.prune[0] != "magnitude"):
        raise UsageError("--global sets one magnitude threshold for all layers", "--global",
                         "--prune S (a fraction) as well")
    if args.method == "gptq":
        widest = 4 * cfg.n_embd
        if args.calib_tokens < widest:
            raise UsageError(f"{args.calib_tokens} calibration tokens give a singular Hessian for "
                             f"the {widest}-wide input of mlp.c_proj",
                             f"--calib-tokens {args.calib_tokens}",
                             f"at least {widest} (the widest layer input; 8192 by default)")


def calibration_batches(tokens, n_tokens, block_size, seed=0):
    """n_tokens of training data as [n_tokens / T, T] windows at random (seeded) starts."""
    rows = -(-n_tokens // block_size)
    if len(tokens) < block_size + 1 or len(tokens) < n_tokens:
        raise ValueError(f"tokens: {len(tokens)} tokens, fewer than the {n_tokens} asked for")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - block_size, size=rows)
    return np.stack([np.asarray(tokens[s:s + block_size], np.int64) for s in starts])


def layer_inputs(model, name, batches, chunk=16):
    """Yield the inputs [rows, K] of linear `name` for the calibration batches (a forward each)."""
    parts = name.split(".")
    block, sub = int(parts[1]), ".".join(parts[2:4])
    for b in range(0, len(batches), chunk):
        model.forward(batches[b:b + chunk])
        x = model._caches[block][sub][0]
        model._caches = None
        yield np.asarray(x).reshape(-1, x.shape[-1])


# ---------------------------------------------------------------------------- the work
def compress_model(model, args, train_tokens, log):
    """Prune, recover, quantise `model` (numpy backend) in place. Returns (layers, quantized,
    masks, recover_losses): per-layer report rows, {name: QuantizedWeight}, {name: mask}."""
    from tqdm import tqdm
    names = target_names(model.cfg)
    original = {k: np.array(model.params[k], np.float64) for k in names}
    masks, recover_losses = {}, []
    if args.prune is not None:
        kind, sparsity = args.prune
        masks = pr.make_masks(original, kind, sparsity, args.prune_global)
        for k, m in masks.items():
            model.params[k] = (model.params[k] * m).astype(model.dtype)
        model.sync_lowp()
        log(f"pruned {kind} {'' if kind == '2:4' else f'{sparsity:.0%} '}"
            f"({'global' if args.prune_global else 'per layer'}) of {len(names)} matrices")
        if args.recover_steps:
            recover_losses = pr.recover(model, masks, train_tokens, args.recover_steps,
                                        args.recover_lr, args.batch_size, seed=args.seed,
                                        progress=not args.json)
    quantized = {}
    hessians = {}
    if args.quantize is not None:
        bits = 8 if args.quantize == "int8" else 4
        G = args.group_size if bits == 4 else 0
        batches = (calibration_batches(train_tokens, args.calib_tokens, model.cfg.block_size,
                                       seed=args.seed) if args.method == "gptq" else None)
        model.eval()
        for name in tqdm(names, desc=f"{args.method} {args.quantize}", unit="layer",
                         disable=args.json):
            w = np.asarray(model.params[name], np.float64)
            mask = masks.get(name)
            if args.method == "gptq":
                h, n = None, 0
                for x in layer_inputs(model, name, batches):
                    h, n = qz.add_hessian(h, n, x)
                hessians[name] = h
                qw = qz.quantize_gptq(w, h, bits, G, mask, act_order=not args.no_act_order,
                                      damp=args.damp)
            else:
                qw = qz.quantize_rtn(w, bits, G, mask)
            quantized[name] = qw
            # later layers see this one quantised (GPTQ's sequential calibration)
            model.params[name] = ql.dequantize(qw).astype(model.dtype)
            model.sync_lowp()
    layers = []
    for name in names:
        w0, w = original[name], np.asarray(model.params[name], np.float64)
        row = {"name": name, "shape": list(w0.shape),
               "bits": quantized[name].bits if name in quantized else None,
               "group_size": quantized[name].group_size or None if name in quantized else None,
               "sparsity": float(1 - masks[name].mean()) if name in masks else None,
               "weight_rel_error": float(np.linalg.norm(w - w0) / max(np.linalg.norm(w0), 1e-300))}
        if name in hessians:
            row["output_rel_error"] = qz.output_error(w0, w, hessians[name])
        layers.append(row)
    return layers, quantized, masks, recover_losses


def write_checkpoint(out, src_ckpt, model, state, tokenizer, quantized, masks, meta):
    """The compressed checkpoint folder (store.py describes it), assembled in a temporary
    folder and renamed into place."""
    from safetensors.numpy import save_file

    from ..checkpoint import CONFIG_FILE, MODEL_FILE, STATE_FILE, _write_json
    tmp = out.rstrip("/") + f".tmp_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        tensors = {}
        compressed = set(quantized) | set(masks)
        for k, v in model.params.items():
            a = np.ascontiguousarray(model.be.asnumpy(v), np.float32)
            if k not in compressed:
                tensors[k] = a
                continue
            for suffix, t in encode_layer(a, quantized.get(k), masks.get(k)).items():
                tensors[f"{k}.{suffix}"] = np.ascontiguousarray(t)
        save_file(tensors, os.path.join(tmp, MODEL_FILE))
        shutil.copy(os.path.join(src_ckpt, CONFIG_FILE), os.path.join(tmp, CONFIG_FILE))
        if tokenizer is not None:
            tokenizer.save(tmp)
        _write_json(os.path.join(tmp, COMPRESSION_FILE), meta)
        new_state = {k: state[k] for k in ("step", "args") if k in state}
        new_state.update(dtype="float32", precision="fp32", compressed=True)
        _write_json(os.path.join(tmp, STATE_FILE), new_state)
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def markdown_report(report):
    lines = [f"# Compression of {report['source']}", "",
             f"flags: `{report['flags']}`", "",
             "| | validation loss | perplexity | model.safetensors |", "|---|---|---|---|"]
    for key in ("before", "after"):
        r = report.get(key)
        if r:
            lines.append(f"| {key} | {r['val_loss']:.4f} | {r['perplexity']:.2f} | "
                         f"{r['size_bytes']:,} B |")
    if report.get("before") and report.get("after"):
        lines += ["", f"loss change: {report['loss_change_pct']:+.2f} % on {report['after']['tokens']:,} "
                      "validation tokens"]
    lines += ["", "| layer | shape | bits | group | sparsity | weight rel. error | output rel. error |",
              "|---|---|---|---|---|---|---|"]
    for r in report["layers"]:
        out_err, sparsity = r.get("output_rel_error"), r["sparsity"]
        lines.append(f"| {r['name']} | {r['shape'][0]}x{r['shape'][1]} | {r['bits'] or 32} | "
                     f"{r['group_size'] or '-'} | "
                     f"{'-' if sparsity is None else format(sparsity, '.1%')} | "
                     f"{r['weight_rel_error']:.2e} | {'-' if out_err is None else format(out_err, '.2e')} |")
    return "\n".join(lines) + "\n"


def run_compress(args):
    from ..checkpoint import MODEL_FILE, find_checkpoint, load_model, read_state
    t0 = time.time()
    log = ((lambda m: print(m, flush=True)) if not args.json else (lambda m: None))
    args.prune = pr.parse_prune(args.prune)
    src = find_checkpoint(os.path.expanduser(args.ckpt))
    if is_compressed(src):
        raise UsageError("this checkpoint is already compressed", f"--ckpt {src}",
                         "the float checkpoint written by scratchgpt train (compress once, "
                         "from full precision)")
    state = read_state(src)
    model, state, tokenizer, src = load_model(src, backend="numpy", dtype="float32",
                                              precision="fp32")
    check_args(args, model.cfg)
    out_dir = os.path.expanduser(args.out)
    if os.path.exists(out_dir) and not (os.path.isdir(out_dir) and
                                        (not os.listdir(out_dir) or is_compressed(out_dir))):
        raise UsageError("the folder exists and is not a compressed checkpoint", f"--out {args.out}",
                         "a new folder, or a compressed checkpoint to replace")
    needs_train = args.method == "gptq" or args.recover_steps
    data = None
    try:
        data = ev.find_data(args.data, src, state)
    except (UsageError, FileNotFoundError):
        if needs_train or args.data is not None:
            raise
    if needs_train and (data is None or os.path.isfile(data)):
        raise UsageError("GPTQ's calibration and recovery read training tokens", "--data",
                         "a folder of token shards (*train*.bin, e.g. RUN/data)")
    train_tokens = ev.load_tokens(data, "train") if needs_train else None
    if args.method == "gptq" and args.quantize and len(train_tokens) < max(args.calib_tokens,
                                                                         model.cfg.block_size + 1):
        raise UsageError(f"the training split holds {len(train_tokens)} tokens, fewer than the "
                         f"{args.calib_tokens} asked for", f"--calib-tokens {args.calib_tokens}",
                         f"at most the training tokens of {data}")
    val_tokens = ev.load_tokens(data, "val", tokenizer) if data is not None else None

    before = None
    if val_tokens is not None:
        loss, n = ev.validation_loss(model, val_tokens, args.eval_tokens, progress=not args.json)
        before = ev.summary(loss, n, os.path.getsize(os.path.join(src, MODEL_FILE)))
        log(f"source: val loss {loss:.4f} on {n:,} tokens")
    layers, quantized, masks, recover_losses = compress_model(model, args, train_tokens, log)

    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in (
        ("quantize", args.quantize), ("group_size", args.group_size if args.quantize == "int4" else None),
        ("method", args.method if args.quantize else None),
        ("prune", None if args.prune is None else (args.prune[0] if args.prune[0] == "2:4"
                                                   else args.prune[1])),
        ("recover_steps", args.recover_steps or None)) if v is not None)
    if args.prune_global:
        flags += " --global"
    meta = {"format": FORMAT, "source": src, "data": data, "flags": flags,
            "quantize": args.quantize, "group_size": args.group_size if args.quantize == "int4" else None,
            "method": args.method if args.quantize else None,
            "prune": None if args.prune is None else {"kind": args.prune[0], "sparsity": args.prune[1],
                                                      "global": bool(args.prune_global)},
            "recover_steps": args.recover_steps, "calib_tokens": args.calib_tokens
            if args.method == "gptq" and args.quantize else None,
            "layers": {r["name"]: {"shape": r["shape"], "bits": r["bits"], "group_size": r["group_size"],
                                   "sparsity": r["sparsity"]} for r in layers}}
    out = write_checkpoint(os.path.expanduser(args.out), src, model, state, tokenizer, quantized,
                           masks, meta)

    after = None
    if val_tokens is not None:
        from ..checkpoint import load_model as load
        cmodel = load(out, backend="numpy")[0]
        loss, n = ev.validation_loss(cmodel, val_tokens, args.eval_tokens, progress=not args.json)
        after = ev.summary(loss, n, os.path.getsize(os.path.join(out, MODEL_FILE)))
        log(f"compressed: val loss {loss:.4f} on {n:,} tokens")
    report = {"source": src, "out": out, "flags": flags, "before": before, "after": after,
              "loss_change_pct": (100 * (after["val_loss"] / before["val_loss"] - 1)
                                   if before and after else None),
              "size_ratio": (after["size_bytes"] / before["size_bytes"] if before and after else None),
              "recover_losses": recover_losses[-10:], "seconds": time.time() - t0, "layers": layers}
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(markdown_report(report))
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "layers"}))
    else:
        size = os.path.getsize(os.path.join(out, MODEL_FILE))
        log(f"wrote {out} ({size:,} bytes; report.md and report.json beside it)")
    return 0


def run_eval(args):
    """`scratchgpt eval --ckpt DIR [--data ...] [--json]`: validation loss and perplexity."""
    from ..checkpoint import MODEL_FILE, load_model
    from ..train import resolve_backend
    from .store import read_compression
    backend = resolve_backend(args.backend)
    model, state, tokenizer, ckpt = load_model(args.ckpt, backend=backend)
    meta = read_compression(ckpt) if is_compressed(ckpt) else None
    data = ev.find_data(args.data, ckpt, state, meta)
    tokens = ev.load_tokens(data, "val", tokenizer)
    loss, n = ev.validation_loss(model, tokens, args.max_tokens, progress=args.progress and not args.json)
    weights = os.path.join(ckpt, MODEL_FILE)
    result = ev.summary(loss, n, os.path.getsize(weights) if os.path.isfile(weights) else None)
    if args.json:
        print(json.dumps({"ckpt": ckpt, "data": data, "backend": backend, **result}))
    else:
        print(f"{ckpt}: validation loss {loss:.4f} nats/token, perplexity {result['perplexity']:.2f} "
              f"on {n:,} tokens of {data} ({backend}); model.safetensors {result['size_bytes']:,} bytes")
    return 0


LM_EVAL_HELP = ("validation loss and perplexity of the checkpoint's language model",
                "token shards folder (its *val*.bin), a run folder holding data/, or a text file "
                "(default: the checkpoint's run data)")


def add_eval_arguments(p):
    """The flags only the language-model loss of `scratchgpt eval` takes (--ckpt, --data,
    --backend and --json are the command's)."""
    from ..cli import positive_int
    p.add_argument("--max-tokens", type=positive_int, default=65536,
                   help="--task lm: validation tokens scored (the split's first ones; default 65536)")


def register(sub):
    from ..cli import nonneg_int, positive_float, positive_int
    p = sub.add_parser("compress", help="quantise (int8 / int4, RTN or GPTQ) and prune a checkpoint",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="run folder (its newest checkpoint) or checkpoint "
                   "folder written by train")
    p.add_argument("--out", required=True, help="folder for the compressed checkpoint")
    p.add_argument("--quantize", choices=("int8", "int4"), default=None,
                   help="int8: symmetric per output channel; int4: asymmetric per group of "
                   "--group-size input channels, two per byte (block matrices only)")
    p.add_argument("--group-size", type=positive_int, default=64,
                   help="int4 group size G (even, dividing the layer widths; default 64)")
    p.add_argument("--method", choices=("rtn", "gptq"), default="rtn",
                   help="rtn: round to nearest; gptq: Frantar et al. 2022 on --calib-tokens")
    p.add_argument("--calib-tokens", type=positive_int, default=8192,
                   help="GPTQ calibration tokens from the training split (default 8192)")
    p.add_argument("--damp", type=positive_float, default=qz.DAMP,
                   help="GPTQ dampening, a fraction of mean(diag H) (default 0.01)")
    p.add_argument("--no-act-order", action="store_true",
                   help="GPTQ: quantise columns left to right, not by decreasing diag H")
    p.add_argument("--prune", default=None, metavar="S|2:4",
                   help="remove the fraction S in [0, 1) of smallest-magnitude block weights, "
                   "or keep 2 of every 4 consecutive input weights")
    p.add_argument("--global", dest="prune_global", action="store_true",
                   help="--prune S: one magnitude threshold across all layers (default: per layer)")
    p.add_argument("--recover-steps", type=nonneg_int, default=0,
                   help="after pruning, N steps of masked AdamW on the training tokens "
                   "(before any quantisation)")
    p.add_argument("--recover-lr", type=positive_float, default=3e-4,
                   help="recovery learning rate, constant, no weight decay (default 3e-4)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="recovery batch size")
    p.add_argument("--data", default=None, help="token shards for calibration, recovery and the "
                   "report's loss (default: the checkpoint's run data)")
    p.add_argument("--eval-tokens", type=positive_int, default=65536,
                   help="validation tokens the report scores before and after (default 65536)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=run_compress)
    return p
