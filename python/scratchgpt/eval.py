"""`scratchgpt eval`: evaluate a checkpoint.

    scratchgpt eval --task qa --shots 2 --ckpt runs/finetune/pretrain    # few-shot, GPT-3 style

With --task, a pretrained model answers the held-out split of a task with --shots solved
examples in its context and no weight update (tasks/fewshot.py).
"""
import argparse

from .tasks import fewshot


def run(args):
    return fewshot.run(args)


def add_arguments(p):
    p.add_argument("--ckpt", required=True, help="run folder (its newest checkpoint), "
                   "checkpoint folder, or Hugging Face GPT-2 / GPT-1 folder")
    fewshot.add_arguments(p)
    p.add_argument("--json", action="store_true", help="last line: a JSON summary")


def register(sub):
    p = sub.add_parser("eval", help="evaluate a checkpoint: few-shot tasks (--task, --shots)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)
