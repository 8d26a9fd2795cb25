"""`scratchgpt finetune`: GPT-1 style supervised fine-tuning for text classification.

    scratchgpt finetune --data sentences.tsv --ckpt runs/mini      # from a pretrained model
    scratchgpt finetune --data sentences.tsv                       # pretrain a small one first

As in Radford et al. (2018), section 3.2: each text is followed by a delimiter token
(here <|endoftext|>), the final transformer state at that token goes through a new linear
layer to the class logits, and the language-modelling loss on the same text is kept as an
auxiliary objective:

    L = L_cls + lambda * L_lm,        lambda = 0.5 by default (the paper's value)

The head is [n_classes, C] on the final hidden state; its gradient enters the model through
GPT.backward(loss_weight=lambda, dhidden=...), so the transformer is trained end to end.
Texts in a batch are right-padded; padded positions carry target -1 (ignored).

Options beyond GPT-1's recipe: `--pool mean` feeds the head the mean of the final hidden
states over the text instead of the state at the delimiter; `--average-epochs K` classifies
with the mean of the weights at the ends of the last K epochs (checkpoint averaging);
`--body-lr-scale S` trains the pretrained transformer at S times the head's learning rate;
`--ensemble K` fine-tunes K models (seeds --seed .. --seed+K-1) and classifies with their mean
class probabilities. `--validation` trains on part of the training split and scores on the
rest, never on the held-out examples, for choosing among these options; `--split-seed` fixes
the split while --seed varies.

The reported baseline is a bag-of-words logistic regression trained on the same split.
Before a model is built the fine-tuning step's memory is estimated and a run that does not fit
is refused (memory.py); a bad TSV (a line without a label, one class only, not UTF-8) is an
error naming the file and the line.
"""
import argparse
import json
import os
import re
import sys
import time
from dataclasses import replace

import numpy as np

from . import memory
from .checkpoint import list_checkpoints, load_model, model_config, read_state, save_checkpoint
from .config import PRESETS
from .cli import ArgumentParser, nonneg_float, nonneg_int, positive_int, probability
from .corpora import CORPORA
from .data import TEXT_SUFFIXES, read_text
from .errors import BadFileError, MissingFileError, UsageError
from .optim import AdamW
from .precision import MixedPrecision, check_supported
from .tasks.task import add_task_data_arguments, fill_task_defaults
from .train import (add_precision_arguments, build_config, log, parse_args as parse_train_args,
                    resolve_backend, train)

TSV = "text<TAB>label lines, UTF-8"

HEAD = "head.safetensors"


# ------------------------------------------------------------------------------ data
def read_labelled(path):
    """(texts, labels) from a `text<TAB>label` file, or from every such file in a folder
    (files whose lines are not all of that form, e.g. a readme, are skipped)."""
    if os.path.isdir(path):
        texts, labels = [], []
        for name in sorted(os.listdir(path)):
            f = os.path.join(path, name)
            if os.path.isfile(f) and name.lower().endswith(TEXT_SUFFIXES):
                try:
                    t, lab = read_labelled(f)
                except ValueError:
                    continue
                texts += t
                labels += lab
        if not texts:
            raise MissingFileError("no text<TAB>label files in this folder", f"--data {path}", TSV)
        return texts, labels
    if not os.path.isfile(path):
        raise MissingFileError("no such file or folder", f"--data {path}", TSV)
    texts, labels = [], []
    content = read_text(path).replace("\r\n", "\n").replace("\r", "\n")
    for n, line in enumerate(content.split("\n"), 1):       # not splitlines(): \x85 is text here
        if not line.strip():
            continue
        text, tab, label = line.rpartition("\t")
        if not tab or not text.strip() or not label.strip():
            raise BadFileError(f"line {n} is not text<TAB>label: {line[:60]!r}", path, TSV)
        texts.append(text.strip())
        labels.append(label.strip())
    if not texts:
        raise BadFileError("no labelled lines", path, TSV)
    return texts, labels


def split_examples(n, test_fraction, seed):
    """Shuffled (train, test) index arrays."""
    if not 0.0 < test_fraction < 1.0:
        raise UsageError(f"{test_fraction} is outside (0, 1)", "--test-fraction",
                         "a number between 0 and 1 (exclusive)")
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return order[n_test:], order[:n_test]


def encode_examples(tokenizer, texts, block_size):
    """Token ids of each text, cropped to block_size - 1, then the delimiter token."""
    delim = tokenizer.eot_id if tokenizer.eot_id is not None else 0
    return [ids[:block_size - 1] + [delim] for ids in tokenizer.encode_batch(texts)]


def make_batch(seqs, pad_id):
    """Right-padded ids [B, T], LM targets [B, T] (-1 on padding and at each last token) and
    the index of each row's last token."""
    T = max(len(s) for s in seqs)
    idx = np.full((len(seqs), T), pad_id, dtype=np.int64)
    targets = np.full((len(seqs), T), -1, dtype=np.int64)
    for r, s in enumerate(seqs):
        idx[r, :len(s)] = s
        targets[r, :len(s) - 1] = s[1:]
    return idx, targets, np.array([len(s) - 1 for s in seqs])


# ------------------------------------------------------------------------------ the head
class ClassifierHead:
    """logits = W h + b, where h is the final hidden state at each row's last token
    (pool="last", GPT-1's) or the mean of the final hidden states over the row's tokens,
    delimiter included and padding excluded (pool="mean")."""

    POOLS = ("last", "mean")

    def __init__(self, n_classes, n_embd, backend, dtype, seed=0, pool="last"):
        if pool not in self.POOLS:
            raise ValueError(f"pool: {pool!r} is not one of {self.POOLS}")
        rng = np.random.default_rng(seed)
        xp = backend.xp
        self.be, self.pool = backend, pool
        weight = rng.normal(0, 0.02, (n_classes, n_embd)).astype(dtype)
        self.params = {"head.weight": xp.asarray(weight), "head.bias": xp.zeros(n_classes, dtype)}

    def _weights(self, shape, last, dtype):
        """[B, T, 1] pooling weights: 1/n on each row's n tokens, 0 on its padding."""
        xp = self.be.xp
        last = xp.asarray(last)
        inside = xp.arange(shape[1])[None, :] <= last[:, None]
        return (inside / (last[:, None] + 1)).astype(dtype)[:, :, None]

    def forward(self, hidden, last, labels=None):
        """hidden [B, T, C], last [B] -> (logits [B, K], loss or None)."""
        xp = self.be.xp
        if self.pool == "mean":
            h = (hidden * self._weights(hidden.shape, last, hidden.dtype)).sum(axis=1)
        else:
            h = hidden[xp.arange(hidden.shape[0]), xp.asarray(last)]
        logits, self._lin = self.be.linear.forward(h, self.params["head.weight"],
                                                   self.params["head.bias"])
        self._shape, self._last = hidden.shape, last
        if labels is None:
            return logits, None
        loss, self._xent = self.be.softmax_xent.forward(logits, xp.asarray(labels))
        return logits, loss

    def backward(self, loss_weight=1.0):
        """(dhidden [B, T, C] for GPT.backward, grads of the head's parameters) of
        loss_weight * the classification loss (the fp16 loss scale)."""
        xp = self.be.xp
        dlogits = self.be.softmax_xent.backward(loss_weight, self._xent)
        dh, dw, db = self.be.linear.backward(dlogits, self._lin)
        if self.pool == "mean":
            dhidden = self._weights(self._shape, self._last, dh.dtype) * dh[:, None, :]
        else:
            dhidden = xp.zeros(self._shape, dtype=dh.dtype)
            dhidden[xp.arange(self._shape[0]), xp.asarray(self._last)] = dh
        return dhidden, {"head.weight": dw, "head.bias": db}


class WeightAverage:
    """The running sum of the parameters at the ends of the last `k` epochs (Polyak averaging
    over epochs, as in checkpoint averaging); `apply` writes their mean into the parameters
    in place. Kept in float64 on the host: the model is small and this runs once per epoch."""

    def __init__(self, params, backend, k, epochs):
        self.params, self.be = params, backend
        self.first = max(0, epochs - k)          # 0-based index of the first epoch averaged
        self.sum, self.count = None, 0

    def end_of_epoch(self, epoch):
        if epoch < self.first:
            return
        host = {n: self.be.asnumpy(p).astype(np.float64) for n, p in self.params.items()}
        if self.sum is None:
            self.sum = host
        else:
            for n, v in host.items():
                self.sum[n] += v
        self.count += 1

    def apply(self):
        xp = self.be.xp
        for n, p in self.params.items():
            p[...] = xp.asarray((self.sum[n] / self.count).astype(p.dtype))


def length_batches(lengths, batch_size, rng=None, pool=32):
    """Batches of indices into lengths with little padding: rows are shuffled (when rng is
    given), cut into pools of `pool` batches, sorted by length within a pool, and the batches
    shuffled again, so each batch holds texts of similar length."""
    order = np.arange(len(lengths)) if rng is None else rng.permutation(len(lengths))
    lengths = np.asarray(lengths)
    batches = []
    for p in range(0, len(order), batch_size * pool):
        chunk = order[p:p + batch_size * pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def class_probabilities(model, head, seqs, pad_id, batch_size):
    """[N, K] softmax of the head's logits for each sequence (model in eval mode)."""
    was_training = model.training
    model.eval()
    probs = None
    try:
        for rows in length_batches([len(s) for s in seqs], batch_size, pool=len(seqs)):
            idx, _, last = make_batch([seqs[r] for r in rows], pad_id)
            model.forward(idx)
            logits, _ = head.forward(model.hidden, last)
            z = model.be.asnumpy(logits).astype(np.float64)
            z = np.exp(z - z.max(axis=-1, keepdims=True))
            if probs is None:
                probs = np.zeros((len(seqs), z.shape[1]))
            probs[rows] = z / z.sum(axis=-1, keepdims=True)
    finally:
        model._caches = None
        model.train(was_training)
    return probs


def classify(model, head, seqs, pad_id, batch_size):
    """Predicted class of each sequence (model in eval mode)."""
    return class_probabilities(model, head, seqs, pad_id, batch_size).argmax(axis=-1)


# ------------------------------------------------------------------------------ baseline
WORD_RE = re.compile(r"[a-z0-9']+")


class BagOfWords:
    """Binary word-presence features, kept sparse: the (row, word) pairs that are 1."""

    def __init__(self, texts, vocab=None):
        words = [sorted(set(WORD_RE.findall(t.lower()))) for t in texts]
        if vocab is None:
            vocab = {w: i for i, w in enumerate(sorted(set().union(*words)))}
        self.vocab, self.n_rows = vocab, len(texts)
        pairs = [(r, vocab[w]) for r, ws in enumerate(words) for w in ws if w in vocab]
        self.rows = np.array([r for r, _ in pairs], dtype=np.int64)
        self.cols = np.array([c for _, c in pairs], dtype=np.int64)

    def matmul(self, W):
        """X @ W for W [|vocab|, K]."""
        return np.stack([np.bincount(self.rows, W[self.cols, k], minlength=self.n_rows)
                         for k in range(W.shape[1])], axis=1)

    def rmatmul(self, dz):
        """X^T @ dz for dz [N, K]."""
        return np.stack([np.bincount(self.cols, dz[self.rows, k], minlength=len(self.vocab))
                         for k in range(dz.shape[1])], axis=1)


def logistic_regression(X, y, n_classes, l2=1e-3, steps=300, lr=0.1):
    """Multinomial logistic regression with an L2 penalty on a BagOfWords X, fitted by
    full-batch Adam. Returns (W [F, K], b [K])."""
    N, F = X.n_rows, len(X.vocab)
    W, b = np.zeros((F, n_classes)), np.zeros(n_classes)
    onehot = np.eye(n_classes)[y]
    state = [np.zeros_like(W), np.zeros_like(W), np.zeros_like(b), np.zeros_like(b)]
    for t in range(1, steps + 1):
        z = X.matmul(W) + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        dz = (p - onehot) / N
        grads = ((X.rmatmul(dz) + l2 * W, state[:2], W), (dz.sum(0), state[2:], b))
        for g, (m, v), param in grads:
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            param -= lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    return W, b


def baseline_accuracy(train_texts, train_y, test_texts, test_y, n_classes):
    """Held-out accuracy of a bag-of-words logistic regression (vocabulary: the train texts)."""
    X = BagOfWords(train_texts)
    W, b = logistic_regression(X, np.asarray(train_y), n_classes)
    Xt = BagOfWords(test_texts, X.vocab)
    return float(np.mean((Xt.matmul(W) + b).argmax(axis=1) == np.asarray(test_y)))


# ------------------------------------------------------------------------------ pretraining
# pretraining defaults by task, (BPE vocabulary, copies of the training texts): for sentiment
# 4,096 tokens (most review words whole) beat 1,024 (words in pieces) by 3 - 4 points whatever
# the corpus, and 16 copies of the short sentences beat 4 (README, "Sentiment")
PRETRAIN_DEFAULTS = {"classify": (4096, 16), "qa": (1024, 4), "translate": (1024, 4)}


def fill_pretrain_defaults(args):
    vocab_size, text_repeats = PRETRAIN_DEFAULTS[args.task]
    if args.vocab_size is None:
        args.vocab_size = vocab_size
    if args.text_repeats is None:
        args.text_repeats = text_repeats
    return args


def pretrain_args(args):
    """The `scratchgpt train` arguments of the pretraining run."""
    argv = ["--preset", args.preset, "--vocab-size", str(args.vocab_size),
            "--n-layer", str(args.n_layer), "--n-head", str(args.n_head),
            "--n-embd", str(args.n_embd),
            "--max-steps", str(args.pretrain_steps), "--batch-size", str(args.pretrain_batch_size),
            "--max-corpus-mb", str(args.corpus_mb), "--out", os.path.join(args.out, "pretrain"),
            "--corpus", args.corpus,
            "--backend", args.backend, "--precision", args.precision,
            "--seed", str(args.seed), "--eval-interval",
            str(max(1, args.pretrain_steps // 4)), "--ckpt-interval", str(args.pretrain_steps)]
    if args.block_size:
        argv += ["--block-size", str(args.block_size)]
    if not args.progress:
        argv.append("--no-progress")
    targs = parse_train_args(argv)
    targs.json = args.json
    return targs


def base_model(args, texts, backend):
    """The model a task fine-tunes: --ckpt, or one pretrained here on texts and the corpus
    (pretrained_checkpoint); it must hold a tokenizer; --dropout overrides its config's.
    Returns (model, tokenizer, checkpoint folder)."""
    ckpt = args.ckpt or pretrained_checkpoint(args, texts)
    model, _, tok, ckpt = load_model(ckpt, backend=backend, precision=args.precision)
    if tok is None:
        raise UsageError("the checkpoint holds no tokenizer", f"--ckpt {ckpt}",
                         "a checkpoint written by scratchgpt train, or a Hugging Face folder "
                         "with its tokenizer files")
    if args.dropout is not None:
        model.cfg = replace(model.cfg, dropout=args.dropout)
    return model, tok, ckpt


def pretrained_checkpoint(args, texts):
    """A small GPT pretrained on the fine-tuning texts (train split) and the default corpus;
    a finished pretraining run with the same arguments in OUT/pretrain is reused."""
    targs = pretrain_args(args)
    done = list_checkpoints(targs.out)
    if done and done[-1].endswith(f"ckpt_{args.pretrain_steps:06d}"):
        saved = read_state(done[-1])["args"]
        volatile = ("json", "progress", "lr_decay_steps", "_defaults")
        if all(saved.get(k) == v for k, v in vars(targs).items() if k not in volatile):
            log(args, f"pretrained model: reusing {done[-1]}")
            return done[-1]
    # the labelled texts are short and few: repeat them so they weigh against the corpus
    summary = train(targs, extra_docs=list(texts) * args.text_repeats)
    log(args, f"pretrained: val loss {summary['final_val_loss']:.3f} after "
        f"{summary['steps']} steps ({summary['tokens_per_s']:.0f} tokens/s)")
    return summary["checkpoint"]


# ------------------------------------------------------------------------------ fine-tuning
def check_memory(args, backend):
    """Refuse before pretraining or loading when fine-tuning cannot fit here (the pretraining
    run checks its own memory in train())."""
    cfg = model_config(args.ckpt) if args.ckpt else build_config(pretrain_args(args))
    model = f"--ckpt {args.ckpt}" if args.ckpt else f"--preset {args.preset}"
    if getattr(cfg, "arch", "gpt") != "gpt":
        raise UsageError(f"fine-tuning takes a GPT; this checkpoint holds the {cfg.arch.upper()} "
                         "language model", model, "a checkpoint of scratchgpt train (--arch gpt)")

    def estimate(batch):
        return memory.training_estimate(cfg, batch, backend, "float32", precision=args.precision)
    memory.check(estimate(args.batch_size), f"{model} --batch-size {args.batch_size} on {backend}",
                 make_estimate=estimate, batch_size=args.batch_size)


def split_for_scoring(n, args):
    """(train, scored) indices: the held-out split (--split-seed, default --seed), or with
    --validation a validation part carved from its training part (the same fraction, the same
    seed), so options can be chosen without ever scoring on the held-out examples."""
    split_seed = args.seed if args.split_seed is None else args.split_seed
    tr, te = split_examples(n, args.test_fraction, split_seed)
    if getattr(args, "validation", False):
        sub_tr, sub_va = split_examples(len(tr), args.test_fraction, split_seed)
        tr, te = tr[sub_tr], tr[sub_va]
    return tr, te


def scored_split(args):
    """What the reported accuracy is measured on, for messages."""
    return "validation" if args.validation else "held-out"


def finetune(args):
    t_start = time.time()
    texts, raw_labels = read_labelled(args.data)
    classes = sorted(set(raw_labels))
    if len(classes) < 2:
        raise BadFileError(f"only one class ({classes[0]!r}) in {len(texts)} examples",
                           f"--data {args.data}", "at least two different labels")
    tr, te = split_for_scoring(len(texts), args)
    if len(tr) < 1:
        raise BadFileError(f"{len(texts)} examples leave none to train on", f"--data {args.data}",
                           "more examples, or a smaller --test-fraction")
    backend = resolve_backend(args.backend)
    check_supported(backend, args.precision, f"--precision {args.precision} --backend {backend}")
    check_memory(args, backend)
    y = np.array([classes.index(lab) for lab in raw_labels])
    scored = scored_split(args)
    log(args, f"data: {len(texts)} examples, {len(classes)} classes; {len(tr)} train / "
        f"{len(te)} {scored}")
    base = baseline_accuracy([texts[i] for i in tr], y[tr], [texts[i] for i in te], y[te],
                             len(classes))
    log(args, f"baseline (bag-of-words logistic regression): {scored} accuracy {base:.4f}")

    members = []
    for k in range(args.ensemble):
        member_args = argparse.Namespace(**vars(args))
        if args.ensemble > 1:     # member k: its own pretraining, head, batches and dropout
            member_args.seed = args.seed + k
            member_args.out = os.path.join(args.out, f"member_{k}")
            log(args, f"ensemble member {k + 1} of {args.ensemble} (seed {member_args.seed})")
        members.append(finetune_member(member_args, texts, y, tr, te, classes, base, backend))
    probs = np.mean([m.pop("probabilities") for m in members], axis=0)
    summary = members[0]
    if args.ensemble > 1:
        summary = {"accuracy": float(np.mean(probs.argmax(axis=-1) == y[te])),
                   "member_accuracy": [m["accuracy"] for m in members],
                   **{k: v for k, v in members[0].items()
                      if k not in ("accuracy", "accuracy_per_epoch", "checkpoint", "seconds")},
                   "members": [{"seed": args.seed + k, "accuracy_per_epoch": m["accuracy_per_epoch"],
                                "checkpoint": m["checkpoint"]} for k, m in enumerate(members)],
                   "checkpoint": args.out}
        log(args, f"ensemble of {args.ensemble} (mean class probabilities): {scored} accuracy "
            f"{summary['accuracy']:.4f}; members {', '.join(f'{a:.4f}' for a in summary['member_accuracy'])}")
    summary.update(ensemble=args.ensemble, scored_on="validation" if args.validation else "test",
                   seconds=time.time() - t_start)
    # the same leading keys as --task qa / translate
    return {"task": "classify", "metric": "accuracy", "score": summary["accuracy"],
            "baselines": {"bag_of_words": base}, **summary}


def finetune_member(args, texts, y, tr, te, classes, base, backend):
    """Pretrain (or load) one model, fine-tune it on tr with its head, score it on te."""
    t_start = time.time()
    model, tok, ckpt = base_model(args, [texts[i] for i in tr], backend)
    seqs = encode_examples(tok, texts, model.cfg.block_size)
    pad_id = seqs[0][-1]
    head = ClassifierHead(len(classes), model.cfg.n_embd, model.be, model.dtype, args.seed,
                          pool=args.pool)
    params = {**model.params, **head.params}         # the same arrays: updated in place
    opt = AdamW(params, model.be, lr=args.lr, weight_decay=args.weight_decay,
                lr_scale={name: args.body_lr_scale for name in model.params})
    average = WeightAverage(params, model.be, args.average_epochs, args.epochs)
    mp = MixedPrecision(model, opt, growth_interval=args.loss_scale_interval)
    rng = np.random.default_rng(args.seed)
    steps_per_epoch = -(-len(tr) // args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = max(1, int(0.002 * total) if args.warmup_steps is None else args.warmup_steps)
    scored = scored_split(args)

    from tqdm import tqdm
    bar = tqdm(total=total, disable=not args.progress, unit="step", dynamic_ncols=True,
               file=sys.stderr, desc="finetune")
    step, history = 0, []
    model.train()
    for epoch in range(args.epochs):
        for batch in length_batches([len(seqs[i]) for i in tr], args.batch_size, rng):
            rows = tr[batch]
            idx, targets, last = make_batch([seqs[r] for r in rows], pad_id)
            _, lm_loss = model.forward(idx, targets if args.lm_weight > 0 else None)
            _, cls_loss = head.forward(model.hidden, last, y[rows])
            # the head's loss and the LM loss, both times the loss scale (fp16; else 1)
            dhidden, head_grads = head.backward(loss_weight=mp.loss_scale)
            grads = model.backward(loss_weight=args.lm_weight * mp.loss_scale, dhidden=dhidden)
            grads.update(head_grads)
            # linear warmup, then linear decay to zero (GPT-1's fine-tuning schedule)
            decay = max(0.0, (total - step) / max(1, total - warmup))
            lr = args.lr * min((step + 1) / warmup, decay)
            mp.step(grads, lr=lr, max_grad_norm=1.0)      # unscale, skip or step, refresh
            step += 1
            loss = float(cls_loss) + args.lm_weight * (float(lm_loss) if lm_loss is not None else 0)
            bar.set_postfix(loss=f"{loss:.3f}", cls=f"{float(cls_loss):.3f}")
            bar.update(1)
        average.end_of_epoch(epoch)
        acc = float(np.mean(classify(model, head, [seqs[i] for i in te], pad_id, 64) == y[te]))
        history.append(acc)
        bar.write(f"epoch {epoch + 1}: {scored} accuracy {acc:.4f} (baseline {base:.4f})",
                  file=sys.stderr if args.json else sys.stdout)
    bar.close()
    if average.count > 1:
        average.apply()
        model.sync_lowp()
    probs = class_probabilities(model, head, [seqs[i] for i in te], pad_id, 64)
    accuracy = float(np.mean(probs.argmax(axis=-1) == y[te]))
    if average.count > 1:
        log(args, f"weights averaged over the last {average.count} epochs: {scored} accuracy "
            f"{accuracy:.4f} (baseline {base:.4f})")

    out = save_checkpoint(args.out, step, model, None, {"classes": classes, "base": ckpt,
                                                        "accuracy": accuracy, "pool": args.pool},
                          tok, keep=1)
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(model.be.asnumpy(v)) for k, v in head.params.items()},
              os.path.join(out, HEAD))
    return {"accuracy": accuracy, "baseline_accuracy": base, "accuracy_per_epoch": history,
            "pool": args.pool, "averaged_epochs": max(1, average.count),
            "precision": model.precision, "skipped_steps": mp.skipped_steps,
            "loss_scale": mp.loss_scale,
            "classes": classes, "n_train": int(len(tr)), "n_test": int(len(te)),
            "epochs": args.epochs, "lm_weight": args.lm_weight, "pretrained_from": ckpt,
            "checkpoint": out, "seconds": time.time() - t_start, "probabilities": probs}


def run(args):
    fill_pretrain_defaults(fill_task_defaults(args))
    if args.task != "classify":
        for flag, given in (("--ensemble", args.ensemble > 1), ("--validation", args.validation),
                            ("--split-seed", args.split_seed is not None)):
            if given:
                raise UsageError(f"{flag} is for --task classify", flag,
                                 f"--task classify, or leave {flag} out")
        from .tasks.generative import run as run_generative
        return run_generative(args)
    if args.data is None:
        raise UsageError("missing a required argument", "--data", TSV + " (--task classify)")
    summary = finetune(args)
    scored = scored_split(args)
    log(args, f"{scored} accuracy {summary['accuracy']:.4f}, bag-of-words baseline "
        f"{summary['baseline_accuracy']:.4f} ({summary['n_test']} examples, "
        f"{summary['seconds']:.0f} s); model and head in {summary['checkpoint']}")
    if args.json:
        print(json.dumps(summary))
    return 0


def add_arguments(p):
    add_task_data_arguments(p, "classify")
    p.add_argument("--ckpt", help="pretrained checkpoint or run folder (default: pretrain a "
                   "small model on the texts and the default corpus first)")
    p.add_argument("--lm-weight", type=nonneg_float, default=0.5, help="lambda of the auxiliary "
                   "language-modelling loss (default 0.5, as GPT-1; classify only: qa and "
                   "translate train on the answer tokens alone)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="default: 5 for classify, 3 for qa, 6 for translate")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--lr", type=nonneg_float, default=2e-3)
    p.add_argument("--body-lr-scale", type=nonneg_float, default=1.0, metavar="S",
                   help="classify: the pretrained transformer's learning rate is S times "
                   "--lr, the new head's --lr (default 1: one rate; 0 freezes the body)")
    p.add_argument("--warmup-steps", type=nonneg_int, default=None,
                   help="default: 0.2%% of the steps")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.01)
    p.add_argument("--dropout", type=probability, default=0.1, help="dropout while fine-tuning")
    p.add_argument("--pool", default="last", choices=ClassifierHead.POOLS,
                   help="classify: what the head reads: the final hidden state at the "
                   "delimiter token (last, GPT-1's; the default) or the mean of the final "
                   "hidden states over the text (mean)")
    p.add_argument("--average-epochs", type=positive_int, default=3, metavar="K",
                   help="classify with the mean of the weights at the ends of the last K "
                   "epochs (checkpoint averaging; default 3; 1: the last epoch's weights)")
    p.add_argument("--ensemble", type=positive_int, default=1, metavar="K",
                   help="classify: fine-tune K models (seeds --seed .. --seed+K-1, each "
                   "pretrained on its own when there is no --ckpt) and classify with their mean "
                   "class probabilities (default 1)")
    p.add_argument("--split-seed", type=nonneg_int, default=None,
                   help="classify: the seed of the train / held-out split (default: --seed), "
                   "so runs that differ only in --seed score the same examples")
    p.add_argument("--validation", action="store_true",
                   help="classify: train on part of the training split and score on the rest "
                   "(--test-fraction of it), never on the held-out examples: for choosing "
                   "options")
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "host", "cuda"))
    add_precision_arguments(p)
    p.add_argument("--out", default="runs/finetune")
    g = p.add_argument_group("pretraining (without --ckpt)")
    g.add_argument("--preset", default="mini", choices=sorted(PRESETS), metavar="PRESET",
                   help="the preset whose other fields the sizes below override (default mini)")
    g.add_argument("--vocab-size", type=positive_int, default=None,
                   help="BPE tokens (default: 4096 for classify, 1024 for qa and translate)")
    g.add_argument("--n-layer", type=positive_int, default=3)
    g.add_argument("--n-head", type=positive_int, default=4)
    g.add_argument("--n-embd", type=positive_int, default=96)
    g.add_argument("--block-size", type=positive_int, default=None,
                   help="context (default: 64 for classify, 192 for qa, 96 for translate)")
    g.add_argument("--pretrain-steps", type=positive_int, default=None,
                   help="default: 400 for classify and qa, 1200 for translate")
    g.add_argument("--pretrain-batch-size", type=positive_int, default=16)
    g.add_argument("--corpus-mb", type=nonneg_float, default=1.0,
                   help="MB of --corpus to pretrain on besides the texts")
    g.add_argument("--corpus", default="python", choices=CORPORA,
                   help="the pretraining corpus (scratchgpt train --corpus; default python)")
    g.add_argument("--text-repeats", type=positive_int, default=None,
                   help="copies of the training texts in the pretraining data (default: 16 for "
                   "classify, 4 for qa and translate)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--json", action="store_true", help="last line: a JSON summary")


def parse_args(argv):
    p = ArgumentParser(prog="scratchgpt finetune")
    add_arguments(p)
    return fill_pretrain_defaults(fill_task_defaults(p.parse_args(argv)))


def register(sub):
    p = sub.add_parser("finetune", help="fine-tune for classification, question answering or "
                       "translation (GPT-1 style)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)
