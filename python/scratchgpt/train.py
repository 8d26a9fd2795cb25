"""`scratchgpt train`: pretrain a GPT on text with AdamW, warmup + cosine decay, clipping,
gradient accumulation, periodic validation and atomic checkpoints.

    scratchgpt train --preset mini                       # the default corpus (Python's stdlib)
    scratchgpt train --data input.txt --out runs/shakespeare --max-steps 2000
    scratchgpt train --resume runs/shakespeare --max-steps 4000
    scratchgpt train --precision bf16                    # bf16 storage, fp32 masters
    mpiexec -n 2 scratchgpt train --batch-size 8         # data parallel: = --grad-accum 2

Everything a run needs to continue is in its checkpoints (weights, AdamW moments and step,
the data sampler's and dropout's RNG state), so N steps in one go and N/2 + --resume + N/2
give bit-identical weights on the same backend. The learning-rate schedule runs over
--lr-decay-steps (default: --max-steps of the first run), fixed when the run starts.

--precision bf16 | fp16 stores weights and activations in bfloat16 / float16 and keeps fp32
master weights (precision.py); fp16 adds a dynamic loss scale, whose skipped steps and scale
are logged. All of it enters the loop at one point, MixedPrecision (its backward and step).

Before anything is allocated the run's memory is estimated (memory.py) and a run that does not
fit is refused with the estimate. Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes
a checkpoint, says where, and exits with 130 / 143; a second one stops at once (the newest
complete checkpoint stays as it was).
"""
import argparse
import json
import math
import os
import signal
import sys
import threading
import time

import numpy as np

from . import distributed, memory
from .checkpoint import (list_checkpoints, load_model, load_optimizer, model_class, read_config,
                         read_state, save_checkpoint)
from .cli import (ArgumentParser, nonneg_float, nonneg_int, open_fraction, positive_float,
                  positive_int, probability)
from .config import PRESETS, GPTConfig
from .corpora import CORPORA, corpus_documents
from .data import (BatchSampler, is_shard, load_split, prepare_data,
                   read_documents, shard_paths, text_files)
from .errors import BadFileError, Interrupted, ScratchError, UsageError, signal_name
from .gru_model import gru_config, is_gru, training_estimate as gru_training_estimate
from .precision import PRECISIONS, LossScaleUnderflow, MixedPrecision, check_supported
from .tokenizer import BPE_MIN_VOCAB, find_tokenizer_files, load_tokenizer, train_tokenizer

SIZE_FLAGS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout")
# a preset whose vocabulary is too small for a byte-level BPE trains a BPE of this size
SMALL_PRESET_BPE_VOCAB = 320
# what --resume may change; everything else comes from the checkpoint
RESUMABLE = ("max_steps", "eval_interval", "eval_iters", "ckpt_interval", "json", "progress",
             "backend", "keep") + distributed.RESUMABLE


class TrainingDiverged(ScratchError, RuntimeError, distributed.SameOnEveryRank):
    """A NaN or Inf loss or gradient; the checkpoints written before it are kept."""


class _NonFinite(Exception):
    """Raised inside the loop with the step; train() turns it into TrainingDiverged."""


# ------------------------------------------------------------------------------ backends
def resolve_backend(name):
    """auto: cuda when the cuda backend is available here (a GPU, or the emulated device),
    else numpy (the fastest CPU path). An explicit backend that is not available here is an
    error saying why."""
    from .kernels import backend_status
    if name == "auto":
        try:
            return "cuda" if backend_status("cuda")["available"] else "numpy"
        except Exception:          # a broken kernel build means "not here" for auto
            return "numpy"
    if name in ("host", "cuda"):
        status = backend_status(name)
        if not status["available"]:
            raise ScratchError(f"the {name} backend is unavailable here: {status['reason']}",
                               f"--backend {name}", "auto, numpy, or a backend that "
                               "`scratchgpt info` lists as available")
    return name


# ------------------------------------------------------------------------------ arguments
def add_model_arguments(p):
    p.add_argument("--preset", default="mini", choices=sorted(PRESETS), metavar="PRESET",
                   help=f"model size, one of {', '.join(sorted(PRESETS))} (default mini); the "
                   f"flags below override its fields. nano's 32-token vocabulary is for "
                   f"--tokenizer char on small texts; with the byte-level BPE (the default) it "
                   f"trains a {SMALL_PRESET_BPE_VOCAB}-token BPE (the BPE needs at least "
                   f"{BPE_MIN_VOCAB}: 256 bytes + <|endoftext|>). A preset too large for this "
                   f"machine is refused before any data is read, with its memory estimate "
                   f"(scratchgpt info --preset NAME --batch-size B prints it)")
    p.add_argument("--vocab-size", type=positive_int,
                   help=f"vocabulary size (the BPE is trained to it; >= {BPE_MIN_VOCAB})")
    p.add_argument("--block-size", type=positive_int, help="context length")
    p.add_argument("--n-layer", type=positive_int)
    p.add_argument("--n-head", type=positive_int)
    p.add_argument("--n-embd", type=positive_int)
    p.add_argument("--dropout", type=probability)


def add_arguments(p):
    add_model_arguments(p)
    p.add_argument("--arch", default="gpt", choices=("gpt", "gru"),
                   help="gpt (default), or gru: the GRU language model (gru_model.py) with "
                   "--n-layer GRU layers of --n-embd units; --n-head does not apply")
    p.add_argument("--data", help="text file, folder of text files, or folder of .bin shards "
                   "(default: the Python standard library's .py sources on this machine)")
    p.add_argument("--corpus", default="python", choices=CORPORA,
                   help="without --data: python (the standard library's .py sources, 12 MB), "
                   "english (its docstrings and comments, pydoc's topics and the system's "
                   "message catalogues' English strings, 6.3 MB) or mixed (both, alternating); "
                   "default python")
    p.add_argument("--tokenizer", default="bpe",
                   help="bpe (byte-level BPE trained on the data), char, or a path to "
                   "tokenizer.json / GPT-2's vocab.json + merges.txt (default bpe)")
    p.add_argument("--max-corpus-mb", type=positive_float, default=None,
                   help="read at most this many MB of text (default: all)")
    p.add_argument("--val-fraction", type=open_fraction, default=0.1)
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "host", "cuda"))
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    add_precision_arguments(p)
    p.add_argument("--max-steps", type=positive_int, default=300)
    p.add_argument("--batch-size", type=positive_int, default=16, help="sequences per micro-batch")
    p.add_argument("--grad-accum", type=positive_int, default=1,
                   help="micro-batches per optimizer step")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate")
    p.add_argument("--min-lr", type=nonneg_float, default=None,
                   help="final learning rate (default lr/10)")
    p.add_argument("--warmup-steps", type=nonneg_int, default=20)
    p.add_argument("--lr-decay-steps", type=positive_int, default=None,
                   help="length of the cosine decay (default: --max-steps)")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.1)
    p.add_argument("--beta1", type=probability, default=0.9)
    p.add_argument("--beta2", type=probability, default=0.95)
    p.add_argument("--grad-clip", type=nonneg_float, default=1.0, help="global-norm clip (0: none)")
    p.add_argument("--eval-interval", type=positive_int, default=50, help="steps between val losses")
    p.add_argument("--eval-iters", type=positive_int, default=10, help="val batches per evaluation")
    p.add_argument("--ckpt-interval", type=positive_int, default=50, help="steps between checkpoints")
    p.add_argument("--keep", type=positive_int, default=2, help="checkpoints kept (newest)")
    p.add_argument("--seed", type=nonneg_int, default=1337)
    p.add_argument("--out", default="runs/mini", help="output folder (default runs/mini)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its newest "
                   "checkpoint (--max-steps may extend it)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    p.add_argument("--json", action="store_true", help="last line: a JSON summary")
    distributed.add_arguments(p)


def add_precision_arguments(p, scaler=True):
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32 (default), or bf16 / fp16: weights and activations stored in "
                   "bfloat16 / float16 with fp32 master weights, accumulation, statistics, loss "
                   "and optimizer; fp16 adds dynamic loss scaling")
    if scaler:
        p.add_argument("--loss-scale-interval", type=positive_int, default=2000,
                       help="fp16: good steps before the loss scale doubles (default 2000)")


def check_precision_args(args, backend):
    """bf16 / fp16 keep float32 masters and run where their kernels are (precision.py)."""
    if args.precision != "fp32" and args.dtype != "float32":
        raise UsageError(f"precision {args.precision} keeps float32 master weights",
                         f"--dtype {args.dtype}", "--dtype float32, or --precision fp32")
    check_supported(backend, args.precision, f"--precision {args.precision} --backend {backend}")


def parse_args(argv):
    p = ArgumentParser(prog="scratchgpt train")
    add_arguments(p)
    args = p.parse_args(argv)
    args._defaults = {a.dest: a.default for a in p._actions}
    return args


def tokenizer_vocab_size(args):
    """The vocabulary a bpe / char tokenizer is trained to: --vocab-size when given; else the
    preset's for the BPE (SMALL_PRESET_BPE_VOCAB for presets too small for one), and no limit
    for char (the text's characters)."""
    if args.vocab_size is not None:
        if args.tokenizer == "bpe" and args.vocab_size < BPE_MIN_VOCAB:
            raise UsageError(f"the byte-level BPE cannot have {args.vocab_size} tokens",
                             "--vocab-size", f"an integer >= {BPE_MIN_VOCAB} (256 bytes + "
                             f"<|endoftext|>), or --tokenizer char")
        return args.vocab_size
    if args.tokenizer == "char":
        return None
    preset = PRESETS[args.preset]["vocab_size"]
    return preset if preset >= BPE_MIN_VOCAB else SMALL_PRESET_BPE_VOCAB


def build_config(args, vocab_size=None):
    """The preset, with the size flags that were given; without --vocab-size the vocabulary
    is the tokenizer's (vocab_size) when one is known."""
    if getattr(args, "arch", "gpt") == "gru":
        return gru_config(args, vocab_size)
    over = {k: getattr(args, k) for k in SIZE_FLAGS if getattr(args, k, None) is not None}
    if vocab_size is not None and "vocab_size" not in over:
        over["vocab_size"] = vocab_size
    try:
        cfg = GPTConfig.preset(args.preset, **over)
    except ValueError as e:               # "n_embd: 100 is not divisible by n_head=3"
        field, _, what = str(e).partition(": ")
        flag = "--" + field.replace("_", "-") if field in SIZE_FLAGS else "--preset"
        raise UsageError(what or str(e), flag, "sizes that fit together (n_embd a multiple "
                         "of n_head)") from None
    if vocab_size is not None and cfg.vocab_size < vocab_size:
        raise UsageError(f"vocabulary {cfg.vocab_size} is smaller than the tokenizer's "
                         f"{vocab_size} ids", "--vocab-size", f"at least {vocab_size}, or no "
                         f"--vocab-size (the tokenizer's)")
    return cfg


# ------------------------------------------------------------------------------ data
def prepare_run_data(args, vocab_size, data_dir, extra_docs=()):
    """(tokenizer or None, train tokens, val tokens), cached in data_dir: the tokenizer and
    the shards are built once per (data, tokenizer, vocab size, corpus limit)."""
    if args.data and os.path.isdir(args.data) and shard_paths(args.data, "train"):
        tok = _tokenizer_for_shards(args)
        return tok, load_split(args.data, "train"), load_split(args.data, "val")
    if args.data and is_shard(args.data):
        raise UsageError("a single shard", f"--data {args.data}", "the folder holding its "
                         "*train*.bin and *val*.bin shards")
    corpus = getattr(args, "corpus", "python")
    if args.data and corpus != "python":
        raise UsageError("--corpus chooses the text when there is no --data",
                         f"--corpus {corpus} --data {args.data}", "one of the two")
    key = {"data": os.path.abspath(args.data) if args.data else
           "<python stdlib>" if corpus == "python" else f"<corpus {corpus}>",
           "tokenizer": args.tokenizer if args.tokenizer in ("bpe", "char")
           else os.path.abspath(args.tokenizer),
           "vocab_size": vocab_size, "max_corpus_mb": args.max_corpus_mb,
           "val_fraction": args.val_fraction, "extra_docs": len(extra_docs)}
    key_path = os.path.join(data_dir, "source.json")
    if os.path.isfile(key_path) and find_tokenizer_files(data_dir):
        with open(key_path) as f:
            try:
                cached = json.load(f)
            except json.JSONDecodeError:
                cached = None             # cut short: tokenize again
        if cached == key:
            return (load_tokenizer(data_dir), load_split(data_dir, "train"),
                    load_split(data_dir, "val"))
    max_bytes = None if args.max_corpus_mb is None else int(args.max_corpus_mb * 2 ** 20)
    docs = list(extra_docs) + (read_documents(text_files(args.data), max_bytes) if args.data
                               else corpus_documents(corpus, max_bytes))
    log(args, f"data: {len(docs)} documents, {sum(map(len, docs)) / 2 ** 20:.1f} MB of text; "
        f"tokenizing into {data_dir}")
    if args.tokenizer in ("bpe", "char"):
        tok = train_tokenizer(args.tokenizer, docs, vocab_size)
    else:
        tok = load_tokenizer(args.tokenizer)
    os.makedirs(data_dir, exist_ok=True)
    if os.path.exists(key_path):
        os.remove(key_path)               # the cache is valid again only once it is complete
    tok.save(data_dir)
    train, val = prepare_data(docs, tok, data_dir, args.val_fraction)
    with open(key_path + ".tmp", "w") as f:
        json.dump(key, f)
    os.replace(key_path + ".tmp", key_path)
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


def _pyplot():
    """matplotlib's pyplot on the Agg backend. Training imports it before it starts: an import
    cut short by a second SIGINT leaves a half-initialised module whose next import (the
    checkpoint's plot on the way out) fails with an ImportError instead of the interrupt."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_losses(history, path):
    """The loss curve (train per step, val where measured) as a PNG."""
    plt = _pyplot()
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
    """On --resume: the run's saved arguments, except the ones RESUMABLE that were given.
    Returns (arguments, newest checkpoint, its config). Size flags that disagree with the
    checkpoint are an error: a resumed run keeps its model."""
    ckpts = list_checkpoints(args.resume)
    if not ckpts:
        from .errors import MissingFileError
        raise MissingFileError("no checkpoint to resume", f"--resume {args.resume}",
                               "a run folder holding ckpt_* checkpoints from scratchgpt train")
    state = read_state(ckpts[-1])
    cfg = read_config(ckpts[-1])
    saved = state.get("args")
    if not isinstance(saved, dict) or "data_rng" not in state:
        raise BadFileError("not a training checkpoint (its state.json holds no training "
                           "arguments or data sampler state)",
                           ckpts[-1], "a checkpoint written by scratchgpt train (fine-tuned "
                           "models cannot be resumed)")
    for k in SIZE_FLAGS:
        given = getattr(args, k, None)
        if given is not None and given != getattr(cfg, k, None):
            raise UsageError(f"--{k.replace('_', '-')} {given} differs from the checkpoint's "
                             f"{k}={getattr(cfg, k)}", f"--resume {args.resume}",
                             "no size flags with --resume (the run keeps its model), or a "
                             "new run with another --out")
    given_precision = getattr(args, "precision", None)
    if given_precision not in (None, argv_defaults.get("precision"),
                               saved.get("precision", "fp32")):
        raise UsageError(f"--precision {given_precision} differs from the run's precision "
                         f"{saved.get('precision', 'fp32')}", f"--resume {args.resume}",
                         "no --precision with --resume (the run keeps its precision), or a "
                         "new run with another --out")
    given_preset = getattr(args, "preset", None)
    if given_preset not in (None, argv_defaults.get("preset"), saved.get("preset")):
        raise UsageError(f"--preset {given_preset} differs from the run's preset "
                         f"{saved.get('preset')}", f"--resume {args.resume}",
                         "no --preset with --resume, or a new run with another --out")
    given = {k: v for k, v in vars(args).items() if k in RESUMABLE and v != argv_defaults.get(k)}
    base = {k: v for k, v in vars(args).items() if k not in ("func", "_defaults")}
    merged = argparse.Namespace(**{**base, **saved, **given})
    merged.resume, merged.out = args.resume, args.resume
    return merged, ckpts[-1], cfg


def check_memory(args, cfg, backend):
    """Refuse a run whose estimated peak memory does not fit here (memory.check)."""
    def estimate(cfg_, batch):
        if is_gru(cfg_):
            return gru_training_estimate(cfg_, batch, backend, args.dtype, args.grad_accum)
        return memory.training_estimate(cfg_, batch, backend, args.dtype, args.grad_accum,
                                        precision=args.precision)
    memory.check(estimate(cfg, args.batch_size),
                 f"--preset {args.preset} --batch-size {args.batch_size} on {backend}",
                 make_estimate=lambda b: estimate(cfg, b), batch_size=args.batch_size,
                 smaller_presets=memory.presets_by_size(lambda c: estimate(c, 1)))


class StopOnSignal:
    """While training: the first SIGINT / SIGTERM asks the loop to stop after its step (it
    writes a checkpoint), a second one raises Interrupted at once."""

    def __init__(self, out):
        self.out, self.signum, self.previous = out, None, {}
        self.again = None            # the second signal's Interrupted, once raised

    def raise_if_again(self):
        """Raise the second signal's Interrupted again: a handler's exception that lands in a
        weakref callback or a __del__ (the garbage collector runs them at any bytecode) is
        printed as "Exception ignored" and dropped, and the loop would carry on."""
        if self.again is not None:
            raise self.again

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        self.previous_unraisable = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        return self

    def _unraisable(self, unraisable):
        """The second signal's Interrupted dropped in a weakref callback / __del__: no traceback
        (raise_if_again raises it where it counts); anything else as Python reports it."""
        if unraisable.exc_value is None or unraisable.exc_value is not self.again:
            self.previous_unraisable(unraisable)

    def _handle(self, signum, frame):
        if self.signum is not None:
            kept = list_checkpoints(self.out)
            self.again = Interrupted(f"interrupted again by {signal_name(signum)}: stopped at "
                                     "once", self.out, "the newest complete checkpoint is "
                                     f"{kept[-1] if kept else 'none yet'}", signum=signum)
            raise self.again
        self.signum = signum
        print(f"\n{signal_name(signum)}: finishing this step, then writing a checkpoint "
              "(again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = self.previous_unraisable
        return False


# ------------------------------------------------------------------------------ training
def train_step(model, mp, sampler, args, lr, dp=None):
    """One optimizer step over grad_accum micro-batches: (mean loss, gradient norm or None,
    skipped). Precision enters here and only here: mp.backward scales the loss gradient (fp16),
    mp.step unscales, skips a step whose gradients are not finite (fp16), or steps the fp32
    masters and refreshes the model's bf16 / fp16 copy. The gradients live only here, so the
    next step's forward starts without them. Data parallelism enters here too (dp,
    distributed.py): each rank runs its grad_accum of the dp.size * grad_accum micro-batches,
    dp.reduce sums the gradients across the ranks in a fixed order."""
    dp = dp or distributed.DataParallel()
    accum = dp.global_accum(args.grad_accum)
    losses, grads = [], None
    for x, y in dp.micro_batches(sampler, model, args.grad_accum):
        _, loss = model.forward(x, y)
        losses.append(float(loss))
        if not math.isfinite(losses[-1]):
            break
        g = mp.backward(loss_weight=1.0 / accum)
        if grads is None:
            grads = g
        else:
            for k in grads:
                grads[k] += g[k]
        del g
    losses, grads = dp.reduce(losses, grads, args.grad_accum)
    loss_sum = 0.0
    for loss in losses:
        if not math.isfinite(loss):
            return loss, None, False
        loss_sum += loss / accum
    norm, skipped = mp.step(grads, lr=lr, max_grad_norm=args.grad_clip or None)
    return loss_sum, None if norm is None else float(norm), skipped


def train(args, extra_docs=(), on_step=None):
    """Run (or resume) training; returns the summary dict. Raises TrainingDiverged on a
    non-finite loss (the checkpoints written before it are kept), NotEnoughMemory before
    anything is allocated when the run does not fit here, Interrupted after SIGINT / SIGTERM
    (with a checkpoint of the last finished step). on_step(step, loss), when given, is called
    after each optimizer step (scaling.py's sweep drives its own progress bar)."""
    ckpt, resume_cfg = None, None
    dp = distributed.join(args)                   # one process, or a rank under mpiexec
    if args.resume:
        args, ckpt, resume_cfg = _restore_args(args, getattr(args, "_defaults", {}))
    dp.fit_accumulation(args)
    args.progress = args.progress and dp.is_writer
    if args.lr_decay_steps is None:
        args.lr_decay_steps = args.max_steps
    for name in ("max_steps", "batch_size", "grad_accum", "eval_iters", "eval_interval",
                 "ckpt_interval"):
        if getattr(args, name) < 1:
            raise UsageError(f"{getattr(args, name)} is not positive",
                             f"--{name.replace('_', '-')}", "an integer >= 1")
    args.precision = getattr(args, "precision", "fp32")
    args.loss_scale_interval = getattr(args, "loss_scale_interval", 2000)
    backend = resolve_backend(args.backend)
    if backend in ("host", "cuda") and args.dtype != "float32":
        raise UsageError(f"the {backend} kernels run in float32", f"--dtype {args.dtype}",
                         "--dtype float32, or --backend numpy")
    check_precision_args(args, backend)
    dp.use_device(backend)
    out = args.out

    # memory first: a run that cannot fit is refused before any data is read or written
    vocab = tokenizer_vocab_size(args)
    check_memory(args, resume_cfg or build_config(args, vocab), backend)

    # the tokenizer is trained to the preset's (or --vocab-size's) size; a resumed run asks
    # for the same, so it finds the cached data of its first run
    os.makedirs(out, exist_ok=True)
    with dp.rank0_first("data preparation"):
        tok, train_tokens, val_tokens = prepare_run_data(args, vocab, os.path.join(out, "data"),
                                                         extra_docs)
    cfg = resume_cfg or build_config(args, tok.vocab_size if tok is not None else None)
    check_memory(args, cfg, backend)              # the tokenizer's vocabulary is known now
    if tok is not None and tok.vocab_size > cfg.vocab_size:
        raise UsageError(f"the tokenizer's {tok.vocab_size} ids do not fit the model's "
                         f"vocabulary of {cfg.vocab_size}", "--tokenizer / --vocab-size",
                         f"a vocabulary of at least {tok.vocab_size}")
    for split, tokens in (("train", train_tokens), ("val", val_tokens)):
        top = int(np.max(tokens)) if len(tokens) else 0
        if top >= cfg.vocab_size:
            raise BadFileError(f"the {split} data holds token id {top}, outside the model's "
                               f"vocabulary of {cfg.vocab_size}", args.data or out,
                               "tokens of the tokenizer the model uses")
    for split, tokens in (("train", train_tokens), ("val", val_tokens)):
        if len(tokens) < cfg.block_size + 1:
            raise UsageError(f"the {split} split has {len(tokens)} tokens, fewer than "
                             f"block_size + 1 = {cfg.block_size + 1}",
                             f"--data {args.data or '(the default corpus)'}",
                             "more text, another --val-fraction or a smaller --block-size")
    sampler = BatchSampler(train_tokens, args.batch_size, cfg.block_size, seed=args.seed)

    if ckpt is not None:
        model, state, ckpt_tok, _ = load_model(ckpt, backend=backend, precision=args.precision)
        tok = ckpt_tok or tok
    else:
        model = model_class(cfg)(cfg, backend=backend, dtype=args.dtype, seed=args.seed,
                                 precision=args.precision)
        state = {"step": 0}
    opt = dp.optimizer(model.params, model.be, getattr(args, "zero", 0), model.precision,
                       lr=args.lr, betas=(args.beta1, args.beta2), weight_decay=args.weight_decay)
    mp = MixedPrecision(model, opt, growth_interval=args.loss_scale_interval)
    if ckpt is not None:
        load_optimizer(ckpt, opt, state)
        mp.load_state_dict(state)
        sampler.load_state_dict(state["data_rng"])
    start = int(state["step"])
    history_path = os.path.join(out, "log.jsonl")
    history = read_history(history_path, start) if ckpt is not None else []
    _pyplot()
    log(args, f"model: {cfg.num_params():,} parameters ({cfg.n_layer} layers, {cfg.n_embd} wide, "
        f"context {cfg.block_size}, vocab {cfg.vocab_size}); backend {backend} {describe(model)}; "
        f"{len(train_tokens):,} train / {len(val_tokens):,} val tokens"
        + (f"; resuming at step {start}" if ckpt is not None else "") + dp.describe()
        + dp.describe_optimizer(opt))

    saved = {"step": None}

    def checkpoint(step):
        with dp.whole_masters(opt):                # gathered when ZeRO-1 shards them
            return write_checkpoint(step)

    def write_checkpoint(step):
        if not dp.is_writer:                       # rank 0 writes; the others take part
            dp.take_part_in_save(opt)
            saved["step"] = step
            return os.path.join(out, f"ckpt_{step:06d}")
        saved_args = {k: v for k, v in vars(args).items() if k not in ("func", "_defaults")}
        run_state = {"args": saved_args, "data_rng": sampler.state_dict(),
                     "train_loss": history[-1].get("loss") if history else None,
                     **mp.state_dict()}
        path = save_checkpoint(out, step, model, opt, run_state, tok, keep=args.keep)
        saved["step"] = step
        write_history(history_path, history)
        plot_losses(history, os.path.join(out, "loss.png"))
        return path

    from tqdm import tqdm
    tokens_per_step = args.batch_size * dp.global_accum(args.grad_accum) * cfg.block_size
    bar = tqdm(total=args.max_steps, initial=start, disable=not args.progress, unit="step",
               dynamic_ncols=True, file=sys.stderr)
    first_loss = None
    val_loss = None
    step_time, steps_timed = 0.0, 0
    model.train()
    with StopOnSignal(out) as stop:
        try:
            for step in range(start, args.max_steps):
                t0 = time.perf_counter()
                lr = lr_at(step, args)
                loss_sum, norm, skipped = train_step(model, mp, sampler, args, lr, dp)
                if not skipped and (norm is None or not math.isfinite(norm)):
                    raise _NonFinite(step)         # a non-finite loss, or update just applied
                step_time += time.perf_counter() - t0
                steps_timed += 1
                first_loss = loss_sum if first_loss is None else first_loss
                row = {"step": step + 1, "loss": loss_sum, "lr": lr, "grad_norm": norm,
                       "train_s": step_time}       # training time of this process so far
                if mp.scaler is not None:          # fp16: the scale the next step uses
                    row.update(loss_scale=mp.loss_scale, skipped=skipped,
                               skipped_steps=mp.skipped_steps)
                if (step + 1) % args.eval_interval == 0 or step + 1 == args.max_steps:
                    val_loss = evaluate(model, val_tokens, args, args.batch_size)
                    row["val_loss"] = val_loss
                    bar.write(f"step {step + 1}: train loss {loss_sum:.4f}, val loss "
                              f"{val_loss:.4f}", file=sys.stderr if args.json else sys.stdout)
                history.append(row)
                bar.set_postfix(loss=f"{loss_sum:.3f}",
                                tok_s=f"{tokens_per_step * steps_timed / step_time:.0f}",
                                **({"scale": f"{mp.loss_scale:g}", "skipped": mp.skipped_steps}
                                   if mp.scaler is not None else {}))
                bar.update(1)
                if on_step is not None:
                    on_step(step + 1, loss_sum)
                if (step + 1) % args.ckpt_interval == 0 or step + 1 == args.max_steps:
                    checkpoint(step + 1)
                stop.signum = dp.first(stop.signum)       # one rank's signal stops every rank
                if stop.signum is not None:
                    stop.raise_if_again()
                    path = (os.path.join(out, f"ckpt_{step + 1:06d}")
                            if saved["step"] == step + 1 else checkpoint(step + 1))
                    bar.close()
                    raise Interrupted(f"interrupted by {signal_name(stop.signum)} after step "
                                      f"{step + 1} of {args.max_steps}; checkpoint written",
                                      path, f"continue with: scratchgpt train --resume {out}",
                                      signum=stop.signum)
        except (_NonFinite, LossScaleUnderflow) as e:
            bar.close()
            kept = list_checkpoints(out)
            at = (f"the fp16 gradients stay non-finite ({e}) at step {step + 1}"
                  if isinstance(e, LossScaleUnderflow) else
                  f"the loss or gradient is not finite (NaN or Inf) at step {e.args[0] + 1}")
            raise TrainingDiverged(
                f"training stopped: {at}", f"--lr {args.lr} --warmup-steps "
                f"{args.warmup_steps}", "a lower --lr or more --warmup-steps; the last good "
                f"checkpoint is {kept[-1] if kept else 'none (no checkpoint was written yet)'}"
            ) from None
        finally:
            bar.close()
    if val_loss is None:
        val_loss = evaluate(model, val_tokens, args, args.batch_size)
    return {"first_loss": first_loss, "final_loss": history[-1]["loss"] if history else None,
            "final_val_loss": val_loss,
            "tokens_per_s": tokens_per_step * steps_timed / step_time if step_time else None,
            "steps": args.max_steps, "steps_run": steps_timed, "params": cfg.num_params(),
            "backend": backend, "dtype": model.dtype.name, "precision": model.precision,
            "skipped_steps": mp.skipped_steps, "loss_scale": mp.loss_scale, "out": out,
            "checkpoint": list_checkpoints(out)[-1] if list_checkpoints(out) else None}


def describe(model):
    """'float32', or 'bf16 (float32 masters)'."""
    if model.precision == "fp32":
        return model.dtype.name
    return f"{model.precision} ({model.dtype.name} masters)"


def run(args):
    with distributed.ending_all_ranks_on_error():
        summary = train(args)
    msg = (f"done: {summary['steps']} steps, val loss {summary['final_val_loss']:.4f}, "
           f"{summary['tokens_per_s']:.0f} tokens/s" if summary["tokens_per_s"] else
           f"done: nothing to run (the run is at step {summary['steps']})")
    if summary["precision"] == "fp16":
        msg += (f"; fp16 loss scale {summary['loss_scale']:g}, {summary['skipped_steps']} "
                f"skipped steps")
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
