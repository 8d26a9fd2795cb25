"""`scratchgpt finetune --task qa | translate`: fine-tune a GPT to write the answer after a
prompt (tasks/prompts.py), with the loss on the answer tokens only, then answer the held-out
prompts by greedy decoding through the KV cache and score them (tasks/metrics.py) beside the
model-free baselines (tasks/baselines.py) and, for qa, the same model shown the question
without its context.

Without --ckpt a small GPT is first pretrained, as `--task classify` does, on the training
examples (prompt and answer as text, --text-repeats copies) and --corpus-mb of --corpus.
The run folder gets the fine-tuned checkpoint, `predictions.jsonl` (prompt, gold, prediction of
every held-out example) and `finetune.png` (the training loss).
"""
import json
import os
import sys
import time

import numpy as np

from ..checkpoint import save_checkpoint
from ..errors import BadFileError, UsageError
from ..optim import AdamW
from ..precision import MixedPrecision, check_supported
from .prompts import MAX_ANSWER_TOKENS, answer_only_batch, encode, encode_pair, greedy_decode
from .task import load_task


def encode_task(task, tokenizer, examples, block_size, with_context=True):
    """(seqs, prompt lengths, kept indices): the examples whose prompt, answer and end token fit
    in block_size."""
    seqs, plens, kept = [], [], []
    for i, e in enumerate(examples):
        ids, p = encode_pair(tokenizer, task.prompt(e, with_context), task.answer(e))
        if len(ids) <= block_size:
            seqs.append(ids)
            plens.append(p)
            kept.append(i)
    return seqs, plens, kept


def predict(model, tokenizer, task, examples, progress, with_context=True, desc="decode"):
    """Greedy answers of the examples' prompts."""
    from tqdm import tqdm
    out = []
    for e in tqdm(examples, desc=desc, disable=not progress, file=sys.stderr, unit="ex",
                  dynamic_ncols=True):
        ids = encode(tokenizer, task.prompt(e, with_context))
        out.append(greedy_decode(model, tokenizer, ids, MAX_ANSWER_TOKENS[task.name]))
    return out


def plot_curve(losses, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("answer-token loss (nats/token)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def finetune_generative(args):
    from ..finetune import base_model, check_memory, length_batches
    from ..train import log, resolve_backend
    t_start = time.time()
    task = load_task(args)
    if not task.train or not task.test:
        raise BadFileError(f"{len(task.train)} training and {len(task.test)} held-out examples",
                           f"--data {args.data}" if args.data else f"--task {task.name}",
                           "examples on both sides of the split")
    backend = resolve_backend(args.backend)
    check_supported(backend, args.precision, f"--precision {args.precision} --backend {backend}")
    check_memory(args, backend)
    log(args, f"data: {task.description}; {len(task.train)} train / {len(task.test)} held out")
    base = task.baselines()
    log(args, "baselines: " + ", ".join(f"{k} {task.metric} {v:.2f}" for k, v in base.items()))

    texts = [task.prompt(e) + task.answer(e) for e in task.train]
    model, tok, ckpt = base_model(args, texts, backend)
    seqs, plens, kept = encode_task(task, tok, task.train, model.cfg.block_size)
    if not seqs:
        raise UsageError(f"no training example fits the model's context of "
                         f"{model.cfg.block_size} tokens", "--block-size / --ckpt",
                         "a longer context, or shorter examples")
    if len(kept) < len(task.train):
        log(args, f"{len(task.train) - len(kept)} training examples longer than the context "
            f"({model.cfg.block_size} tokens) are left out")
    pad_id = seqs[0][-1]
    opt = AdamW(model.params, model.be, lr=args.lr, weight_decay=args.weight_decay)
    mp = MixedPrecision(model, opt, growth_interval=args.loss_scale_interval)
    rng = np.random.default_rng(args.seed)
    total = -(-len(seqs) // args.batch_size) * args.epochs
    warmup = max(1, int(0.002 * total) if args.warmup_steps is None else args.warmup_steps)

    from tqdm import tqdm
    bar = tqdm(total=total, disable=not args.progress, unit="step", dynamic_ncols=True,
               file=sys.stderr, desc=f"finetune {task.name}")
    step, losses, tokens, t0 = 0, [], 0, time.time()
    model.train()
    for epoch in range(args.epochs):
        for batch in length_batches([len(s) for s in seqs], args.batch_size, rng):
            idx, targets = answer_only_batch([seqs[r] for r in batch],
                                             [plens[r] for r in batch], pad_id)
            _, loss = model.forward(idx, targets)
            grads = model.backward(loss_weight=mp.loss_scale)
            # linear warmup, then linear decay to zero (GPT-1's fine-tuning schedule)
            decay = max(0.0, (total - step) / max(1, total - warmup))
            mp.step(grads, lr=args.lr * min((step + 1) / warmup, decay), max_grad_norm=1.0)
            step += 1
            tokens += idx.size
            losses.append(float(loss))
            bar.set_postfix(loss=f"{losses[-1]:.3f}", epoch=epoch + 1,
                            tok_s=f"{tokens / (time.time() - t0):.0f}")
            bar.update(1)
    bar.close()
    os.makedirs(args.out, exist_ok=True)
    plot_curve(losses, os.path.join(args.out, "finetune.png"))

    predictions = predict(model, tok, task, task.test, args.progress)
    scores = task.score(predictions)
    if task.name == "qa":
        blind = predict(model, tok, task, task.test, args.progress, with_context=False,
                        desc="decode, no context")
        base["same_model_without_context"] = task.score(blind)[task.metric]
    with open(os.path.join(args.out, "predictions.jsonl"), "w") as f:
        for e, p in zip(task.test, predictions):
            f.write(json.dumps({"prompt": task.prompt(e), "gold": task.answer(e).strip(),
                                "prediction": p}) + "\n")
    out = save_checkpoint(args.out, step, model, None,
                          {"task": task.name, "base": ckpt, task.metric: scores[task.metric]},
                          tok, keep=1)
    return {"task": task.name, "metric": task.metric, "score": scores[task.metric],
            "scores": scores, "baselines": base, "n_train": len(seqs), "n_test": len(task.test),
            "epochs": args.epochs, "final_loss": float(np.mean(losses[-20:])),
            "pretrained_from": ckpt, "checkpoint": out, "seconds": time.time() - t_start}


def run(args):
    from ..train import log
    summary = finetune_generative(args)
    log(args, f"{summary['task']}: held-out {summary['metric']} {summary['score']:.2f} ("
        + ", ".join(f"{k} {v:.2f}" for k, v in summary["scores"].items()) + "); baselines: "
        + ", ".join(f"{k} {v:.2f}" for k, v in summary["baselines"].items())
        + f" ({summary['n_test']} examples, {summary['seconds']:.0f} s); model in "
        f"{summary['checkpoint']}")
    if args.json:
        # the last line: the task's summary, ending with the fields every task reports
        head = {k: v for k, v in summary.items()
                if k not in ("task", "metric", "score", "baselines", "n_train", "n_test")}
        tail = {k: summary[k] for k in ("task", "metric", "score", "baselines", "n_train",
                                        "n_test")}
        print(json.dumps({**head, **tail}))
    return 0
