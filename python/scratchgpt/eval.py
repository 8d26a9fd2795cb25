"""`scratchgpt eval`: validation loss and perplexity of a checkpoint, compressed or not, on the
same tokens (the validation split's first --max-tokens).

    scratchgpt eval --ckpt runs/mini
    scratchgpt eval --ckpt runs/mini-int4 --json    # {"val_loss", "perplexity", "tokens", "size_bytes", ...}
"""
import argparse

from .compress import add_eval_arguments, run_eval


def register(sub):
    p = sub.add_parser("eval", help="validation loss and perplexity of a checkpoint",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_arguments(p)
    p.set_defaults(func=run_eval)
    return p
