"""`scratchgpt eval --task qa|translate|classify --shots K --ckpt DIR`: in-context learning,
GPT-3 style. Each held-out example is preceded by K solved training examples (drawn at random
for each one, with a fixed seed), in the same prompt format as fine-tuning, separated by blank
lines; the model's weights are not changed.

qa and translate answer by greedy decoding to the end of the line; classify picks the label
whose tokens the model finds most likely after the prompt (the sum of their log-probabilities),
as GPT-3 scores multiple choice. Shots that do not fit the context (leaving room for the answer)
are dropped, longest first, and the mean number that fit is reported. The split is the one
`scratchgpt finetune --task` uses with the same --data, --lang, --test-fraction, --seed,
--max-train and --max-test, so both land in one table.
"""
import json
import sys
import time

import numpy as np

from ..errors import UsageError
from .prompts import (MAX_ANSWER_TOKENS, SHOT_SEPARATOR, encode, end_ids, greedy_decode,
                      sequence_logprob)
from .task import add_task_data_arguments, fill_task_defaults, load_task


def shot_prompt(task, tokenizer, shots, example, room):
    """(prompt ids, shots used): the solved shots and the example's prompt, dropping the longest
    shots until the ids leave `room` tokens of the context free."""
    texts = [task.prompt(s) + task.answer(s) for s in shots]
    query = task.prompt(example)
    while True:
        ids = encode(tokenizer, SHOT_SEPARATOR.join(texts + [query]))
        if len(ids) <= room or not texts:
            return ids, len(texts)
        texts.pop(int(np.argmax([len(t) for t in texts])))


def evaluate_fewshot(model, tokenizer, task, shots, seed, progress=True):
    """(predictions, mean shots used) on the task's held-out examples."""
    from tqdm import tqdm
    if shots > len(task.train):
        raise UsageError(f"{shots} shots but {len(task.train)} training examples", "--shots",
                         f"at most {len(task.train)}")
    rng = np.random.default_rng(seed)
    labels = sorted({y for _, y in task.train}) if task.name == "classify" else None
    label_ids = None
    if labels:
        label_ids = [encode(tokenizer, task.answer(("", y))) + end_ids(tokenizer) for y in labels]
    room = model.cfg.block_size - (max(map(len, label_ids)) if labels else
                                   MAX_ANSWER_TOKENS[task.name])
    if room < 1:
        raise UsageError(f"a context of {model.cfg.block_size} tokens leaves no room for a "
                         "prompt", "--ckpt", "a model with a longer context")
    predictions, used = [], []
    for e in tqdm(task.test, desc=f"{shots}-shot {task.name}", disable=not progress,
                  file=sys.stderr, unit="ex", dynamic_ncols=True):
        chosen = [task.train[i] for i in rng.choice(len(task.train), shots, replace=False)]
        ids, n = shot_prompt(task, tokenizer, chosen, e, room)
        ids = ids[-room:]
        used.append(n)
        if labels:
            scores = [sequence_logprob(model, ids + lab, len(ids)) for lab in label_ids]
            predictions.append(labels[int(np.argmax(scores))])
        else:
            predictions.append(greedy_decode(model, tokenizer, ids, MAX_ANSWER_TOKENS[task.name]))
    return predictions, float(np.mean(used))


def run(args):
    from ..checkpoint import load_model
    from ..train import log, resolve_backend
    t0 = time.time()
    fill_task_defaults(args)
    task = load_task(args)
    model, _, tok, ckpt = load_model(args.ckpt, backend=resolve_backend(args.backend))
    if tok is None:
        raise UsageError("the checkpoint holds no tokenizer", f"--ckpt {args.ckpt}",
                         "a checkpoint written by scratchgpt train, or a Hugging Face folder "
                         "with its tokenizer files")
    log(args, f"data: {task.description}; {len(task.train)} examples to draw shots from, "
        f"{len(task.test)} held out")
    predictions, used = evaluate_fewshot(model, tok, task, args.shots, args.seed, args.progress)
    scores = task.score(predictions)
    summary = {"scores": scores, "shots": args.shots, "mean_shots_in_context": used,
               "checkpoint": ckpt, "examples": [{"prompt": task.prompt(e),
                                                 "gold": task.answer(e).strip(), "prediction": p}
                                                for e, p in list(zip(task.test, predictions))[:5]],
               "seconds": time.time() - t0, "task": task.name, "metric": task.metric,
               "score": scores[task.metric], "n_test": len(task.test)}
    log(args, f"{args.shots}-shot {task.name} ({used:.2f} shots fit on average): "
        + ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
        + f" on {len(task.test)} held-out examples ({summary['seconds']:.0f} s)")
    if args.json:
        print(json.dumps(summary))
    return 0


def add_arguments(p, lm=None):
    """The task flags of `scratchgpt eval` (lm: see add_task_data_arguments)."""
    from ..cli import nonneg_int
    add_task_data_arguments(p, "lm" if lm else "qa", lm)
    p.add_argument("--shots", type=nonneg_int, default=0,
                   help="with --task classify|qa|translate: solved training examples put "
                   "before each question (default 0)")
