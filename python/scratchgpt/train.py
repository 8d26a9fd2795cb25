"""`scratchgpt train`: pretrain a GPT on text with AdamW, warmup + cosine decay, clipping,
gradient accumulation, periodic validation and atomic checkpoints.

    scratchgpt train --preset mini                       # the default corpus (Python's stdlib)
    scratchgpt train --data input.txt --out runs/shakespeare --max-steps 2000
    scratchgpt train --resume runs/shakespeare --max-steps 4000

Everything a run needs to continue is in its checkpoints (weights, AdamW moments and step,
the data sampler's and dropout's RNG state), so N steps in one go and N/2 + --resume + N/2
give bit-identical weights on the same backend. The learning-rate schedule runs over
--lr-decay-steps (default: --max-steps of the first run), fixed when the run starts.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

from .checkpoint import list_checkpoints, load_model, load_optimizer, save_checkpoint
from .config import PRESETS, GPTConfig
from .data import (BatchSampler, default_corpus_files, is_shard, load_split, prepare_data,
                   read_documents, shard_paths, text_files)
from .model import GPT
from .optim import AdamW
from .tokenizer import find_tokenizer_files, load_tokenizer, train_tokenizer

SIZE_FLAGS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout")
# what --resume may change; everything else comes from the checkpoint
RESUMABLE = ("max_steps", "eval_interval", "eval_iters", "ckpt_interval", "json", "progress",
             "backend", "keep")


class TrainingDiverged(RuntimeError):
    pass


# ------------------------------------------------------------------------------ backends
def resolve_backend(name):
    """auto: cuda when a GPU and the cuda kernels are present, else numpy (the fastest CPU path)."""
    if name != "auto":
        return name
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            from .ops import get_backend
            get_backend("cuda")
            return "cuda"
    except Exception:          # no CuPy, no device or no kernels: all mean "not here"
        pass
    return "numpy"


# ------------------------------------------------------------------------------ arguments
def add_model_arguments(p):
    p.add_argument("--preset", default="mini", choices=sorted(PRESETS),
                   help="model size (default mini); the flags below override its fields")
    p.add_argument("--vocab-size", type=int, help="vocabulary size (the BPE is trained to it)")
    p.add_argument("--block-size", type=int, help="context length")
    p.add_argument("--n-layer", type=int)
    p.add_argument("--n-head", type=int)
    p.add_argument("--n-embd", type=int)
    p.add_argument("--dropout", type=float)


def add_arguments(p):
    add_model_arguments(p)
    p.add_argument("--data", help="text file, folder of text files, or folder of .bin shards "
                   "(default: the Python standard library's .py sources on this machine)")
    p.add_argument("--tokenizer", default="bpe",
                   help="bpe (byte-level BPE trained on the data), char, or a path to "
                   "tokenizer.json / GPT-2's vocab.json + merges.txt (default bpe)")
    p.add_argument("--max-corpus-mb", type=float, default=None,
                   help="read at most this many MB of text (default: all)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "host", "cuda"))
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16, help="sequences per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=None, help="final learning rate (default lr/10)")
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--lr-decay-steps", type=int, default=None,
                   help="length of the cosine decay (default: --max-steps)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.95)
    p.add_argument("--grad-clip", type=float, default=1.0, help="global-norm clip (0: none)")
    p.add_argument("--eval-interval", type=int, default=50, help="steps between val losses")
    p.add_argument("--eval-iters", type=int, default=10, help="val batches per evaluation")
    p.add_argument("--ckpt-interval", type=int, default=50, help="steps between checkpoints")
    p.add_argument("--keep", type=int, default=2, help="checkpoints kept (newest)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", default="runs/mini", help="output folder (default runs/mini)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its newest "
                   "checkpoint (--max-steps may extend it)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    p.add_argument("--json", action="store_true", help="last line: a JSON summary")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="scratchgpt train")
    add_arguments(p)
    args = p.parse_args(argv)
    args._defaults = {a.dest: a.default for a in p._actions}
    return args


def build_config(args, vocab_size=None):
    """The preset, with the size flags that were given; without --vocab-size the vocabulary
    is the tokenizer's (vocab_size) when one is known."""
    over = {k: getattr(args, k) for k in SIZE_FLAGS if getattr(args, k, None) is not None}
    cfg = GPTConfig.preset(args.preset, **over)
    if vocab_size is not None and "vocab_size" not in over:
        cfg = GPTConfig.preset(args.preset, **{**over, "vocab_size": vocab_size})
    if vocab_size is not None and cfg.vocab_size < vocab_size:
        raise ValueError(f"--vocab-size: {cfg.vocab_size} is smaller than the tokenizer's "
                         f"{vocab_size} ids")
    return cfg


# ------------------------------------------------------------------------------ data
def prepare_run_data(args, vocab_size, data_dir, extra_docs=()):
    """(tokenizer or None, train tokens, val tokens), cached in data_dir: the tokenizer and
    the shards are built once per (data, tokenizer, vocab size, corpus limit)."""
    if args.data and os.path.isdir(args.data) and shard_paths(args.data, "train"):
        tok = _tokenizer_for_shards(args)
        return tok, load_split(args.data, "train"), load_split(args.data, "val")
    if args.data and is_shard(args.data):
        raise ValueError(f"--data: {args.data} is a single shard; give the folder holding its "
                         "*train*.bin and *val*.bin shards")
    key = {"data": os.path.abspath(args.data) if args.data else "<python stdlib>",
           "tokenizer": args.tokenizer if args.tokenizer in ("bpe", "char")
           else os.path.abspath(args.tokenizer),
           "vocab_size": vocab_size, "max_corpus_mb": args.max_corpus_mb,
           "val_fraction": args.val_fraction, "extra_docs": len(extra_docs)}
    key_path = os.path.join(data_dir, "source.json")
    if os.path.isfile(key_path) and find_tokenizer_files(data_dir):
        with open(key_path) as f:
            if json.load(f) == key:
                return (load_tokenizer(data_dir), load_split(data_dir, "train"),
                        load_split(data_dir, "val"))
    files = text_files(args.data) if args.data else default_corpus_files()
    max_bytes = None if args.max_corpus_mb is None else int(args.max_corpus_mb * 2 ** 20)
    docs = list(extra_docs) + read_documents(files, max_bytes)
    log(args, f"data: {len(docs)} documents, {sum(map(len, docs)) / 2 ** 20:.1f} MB of text; "
        f"tokenizing into {data_dir}")
    if args.tokenizer in ("bpe", "char"):
        tok = train_tokenizer(args.tokenizer, docs, vocab_size)
    else:
        tok = load_tokenizer(args.tokenizer)
    os.makedirs(data_dir, exist_ok=True)
    tok.save(data_dir)
    train, val = prepare_data(docs, tok, data_dir, args.val_fraction)
    with open(key_path, "w") as f:
        json.dump(key, f)
    return tok, train, val


def _tokenizer_for_shards(args):
    if args.tokenizer not in ("bpe", "char"):
        return load_tokenizer(args.tokenizer)
    return load_tokenizer(args.data) if find_tokenizer_files(args.data) else None


# ------------------------------------------------------------------------------ schedule
def lr_at(step, args):
    """Linear warmup to lr, then cosine decay to min_lr over lr_decay_steps; min_lr after."""
    min_lr = args.lr / 10 if args.min_lr is None else args.min_lr
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    decay = args.lr_decay_steps
    if step >= decay:
        return min_lr
    frac = (step - args.warmup_steps) / max(1, decay - args.warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * frac)) * (args.lr - min_lr)


# ------------------------------------------------------------------------------ helpers
def log(args, msg):
    print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)


def evaluate(model, tokens, args, batch_size):
    """Mean loss over eval_iters batches drawn with a fixed seed: the same batches every time,
    and the training sampler's state is untouched."""
    sampler = BatchSampler(tokens, batch_size, model.cfg.block_size, seed=args.seed + 1)
    was_training = model.training
    model.eval()
    try:
        losses = [float(model.forward(*sampler.next_batch())[1]) for _ in range(args.eval_iters)]
    finally:
        model._caches = None
        model.train(was_training)
    return float(np.mean(losses))


def plot_losses(history, path):
    """The loss curve (train per step, val where measured) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [h["step"] for h in history if "loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [h["loss"] for h in history if "loss" in h], lw=1, label="train")
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    if val:
        ax.plot(*zip(*val), "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=100)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def read_history(path, upto_step):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r["step"] <= upto_step]


def write_history(path, history):
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in history)
    os.replace(path + ".tmp", path)


def _restore_args(args, argv_defaults):
    """On --resume: the run's saved arguments, except the ones RESUMABLE that were given."""
    ckpts = list_checkpoints(args.resume)
    if not ckpts:
        raise FileNotFoundError(f"--resume: no checkpoints (ckpt_*) in {args.resume}")
    with open(os.path.join(ckpts[-1], "state.json")) as f:
        saved = json.load(f)["args"]
    given = {k: v for k, v in vars(args).items() if k in RESUMABLE and v != argv_defaults.get(k)}
    merged = argparse.Namespace(**{**saved, **given})
    merged.resume, merged.out = args.resume, args.resume
    return merged, ckpts[-1]


# ------------------------------------------------------------------------------ training
def train(args, extra_docs=()):
    """Run (or resume) training; returns the summary dict. Raises TrainingDiverged on a
    non-finite loss (the checkpoints written before it are kept)."""
    ckpt = None
    if args.resume:
        args, ckpt = _restore_args(args, getattr(args, "_defaults", {}))
    if args.lr_decay_steps is None:
        args.lr_decay_steps = args.max_steps
    for name in ("max_steps", "batch_size", "grad_accum", "eval_iters", "eval_interval",
                 "ckpt_interval"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, "
                             f"got {getattr(args, name)}")
    backend = resolve_backend(args.backend)
    out = args.out
    os.makedirs(out, exist_ok=True)

    # the tokenizer is trained to the preset's (or --vocab-size's) size; a resumed run asks
    # for the same, so it finds the cached data of its first run
    data = prepare_run_data(args, build_config(args).vocab_size, os.path.join(out, "data"),
                            extra_docs)
    tok, train_tokens, val_tokens = data
    if ckpt is not None:
        model, state, tok, _ = load_model(ckpt, backend=backend)
        cfg = model.cfg
    else:
        cfg = build_config(args, tok.vocab_size if tok is not None else None)
        model = GPT(cfg, backend=backend, dtype=args.dtype, seed=args.seed)
        state = {"step": 0}
    if tok is not None and tok.vocab_size > cfg.vocab_size:
        raise ValueError(f"tokenizer: {tok.vocab_size} ids do not fit the model's vocabulary "
                         f"of {cfg.vocab_size}")
    top = int(np.max(train_tokens)) if len(train_tokens) else 0
    if top >= cfg.vocab_size:
        raise ValueError(f"data: token id {top} does not fit vocab_size={cfg.vocab_size}")

    opt = AdamW(model.params, model.be, lr=args.lr, betas=(args.beta1, args.beta2),
                weight_decay=args.weight_decay)
    sampler = BatchSampler(train_tokens, args.batch_size, cfg.block_size, seed=args.seed)
    if ckpt is not None:
        load_optimizer(ckpt, opt, state)
        sampler.load_state_dict(state["data_rng"])
    start = int(state["step"])
    history_path = os.path.join(out, "log.jsonl")
    history = read_history(history_path, start) if ckpt is not None else []
    log(args, f"model: {cfg.num_params():,} parameters ({cfg.n_layer} layers, {cfg.n_embd} wide, "
        f"context {cfg.block_size}, vocab {cfg.vocab_size}); backend {backend} {model.dtype.name}; "
        f"{len(train_tokens):,} train / {len(val_tokens):,} val tokens"
        + (f"; resuming at step {start}" if ckpt is not None else ""))

    def checkpoint(step):
        saved_args = {k: v for k, v in vars(args).items() if k not in ("func", "_defaults")}
        run_state = {"args": saved_args, "data_rng": sampler.state_dict(),
                     "train_loss": history[-1].get("loss") if history else None}
        path = save_checkpoint(out, step, model, opt, run_state, tok, keep=args.keep)
        write_history(history_path, history)
        plot_losses(history, os.path.join(out, "loss.png"))
        return path

    from tqdm import tqdm
    tokens_per_step = args.batch_size * args.grad_accum * cfg.block_size
    bar = tqdm(total=args.max_steps, initial=start, disable=not args.progress, unit="step",
               dynamic_ncols=True, file=sys.stderr)
    first_loss = None
    val_loss = None
    step_time, steps_timed = 0.0, 0
    model.train()
    try:
        for step in range(start, args.max_steps):
            t0 = time.perf_counter()
            lr = lr_at(step, args)
            loss_sum, grads = 0.0, None
            for _ in range(args.grad_accum):
                x, y = sampler.next_batch()
                _, loss = model.forward(x, y)
                loss = float(loss)
                if not math.isfinite(loss):
                    raise TrainingDiverged(step)
                g = model.backward(loss_weight=1.0 / args.grad_accum)
                if grads is None:
                    grads = g
                else:
                    for k in grads:
                        grads[k] += g[k]
                loss_sum += loss / args.grad_accum
            norm = opt.step(grads, lr=lr, max_grad_norm=args.grad_clip or None)
            if not math.isfinite(float(norm)):
                raise TrainingDiverged(step)       # the update just applied is not finite
            step_time += time.perf_counter() - t0
            steps_timed += 1
            first_loss = loss_sum if first_loss is None else first_loss
            row = {"step": step + 1, "loss": loss_sum, "lr": lr, "grad_norm": float(norm)}
            if (step + 1) % args.eval_interval == 0 or step + 1 == args.max_steps:
                val_loss = evaluate(model, val_tokens, args, args.batch_size)
                row["val_loss"] = val_loss
                bar.write(f"step {step + 1}: train loss {loss_sum:.4f}, val loss {val_loss:.4f}",
                          file=sys.stderr if args.json else sys.stdout)
            history.append(row)
            bar.set_postfix(loss=f"{loss_sum:.3f}",
                            tok_s=f"{tokens_per_step * steps_timed / step_time:.0f}")
            bar.update(1)
            if (step + 1) % args.ckpt_interval == 0 or step + 1 == args.max_steps:
                checkpoint(step + 1)
    except TrainingDiverged as e:
        bar.close()
        kept = list_checkpoints(out)
        raise TrainingDiverged(
            f"training stopped: the loss or gradient is not finite (NaN or Inf) at step "
            f"{e.args[0] + 1}; "
            f"lower --lr or raise --warmup-steps. The last good checkpoint is "
            f"{kept[-1] if kept else 'none (no checkpoint was written yet)'}") from None
    bar.close()
    if val_loss is None:
        val_loss = evaluate(model, val_tokens, args, args.batch_size)
    return {"first_loss": first_loss, "final_loss": history[-1]["loss"] if history else None,
            "final_val_loss": val_loss,
            "tokens_per_s": tokens_per_step * steps_timed / step_time if step_time else None,
            "steps": args.max_steps, "steps_run": steps_timed, "params": cfg.num_params(),
            "backend": backend, "dtype": model.dtype.name, "out": out,
            "checkpoint": list_checkpoints(out)[-1] if list_checkpoints(out) else None}


def run(args):
    try:
        summary = train(args)
    except TrainingDiverged as e:
        print(str(e), file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(e)}))
        return 2
    msg = (f"done: {summary['steps']} steps, val loss {summary['final_val_loss']:.4f}, "
           f"{summary['tokens_per_s']:.0f} tokens/s" if summary["tokens_per_s"] else
           f"done: nothing to run (the run is at step {summary['steps']})")
    log(args, msg + f"; checkpoint {summary['checkpoint']}, loss curve "
        f"{os.path.join(summary['out'], 'loss.png')}")
    if args.json:
        print(json.dumps(summary))
    return 0


def register(sub):
    p = sub.add_parser("train", help="pretrain a GPT on text (default: Python's stdlib sources)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run, _defaults={a.dest: a.default for a in p._actions})
