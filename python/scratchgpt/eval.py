"""`scratchgpt eval`: score a checkpoint, compressed or not, without training it.

    scratchgpt eval --ckpt runs/mini                      # validation loss and perplexity
    scratchgpt eval --ckpt runs/mini-int4 --json          # {"val_loss", "perplexity", "tokens", "size_bytes", ...}
    scratchgpt eval --task qa --shots 3 --ckpt runs/qa/pretrain    # few-shot, GPT-3 style

--task lm (the default) scores the validation split's first --max-tokens tokens
(compress/command.py). --task classify|qa|translate has a pretrained model answer the held-out
split of a task with --shots solved examples in its context and no weight update
(tasks/fewshot.py), the split `finetune --task` holds out.
"""
import argparse

from .compress import LM_EVAL_HELP, add_eval_arguments, run_eval
from .tasks import fewshot


def run(args):
    return run_eval(args) if args.task == "lm" else fewshot.run(args)


def register(sub):
    p = sub.add_parser("eval", help="score a checkpoint: validation loss (--task lm) or a "
                       "task few-shot (--task qa|translate|classify --shots K)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="run folder (its newest checkpoint), checkpoint "
                   "folder (compressed or not), or Hugging Face GPT-2 / GPT-1 folder")
    fewshot.add_arguments(p, lm=LM_EVAL_HELP)
    add_eval_arguments(p)
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "host", "cuda"))
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--json", action="store_true", help="last line: a JSON summary (lm: val_loss, "
                   "perplexity, tokens, size_bytes)")
    p.set_defaults(func=run)
    return p
