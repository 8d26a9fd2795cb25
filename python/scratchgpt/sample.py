"""`scratchgpt sample`: generate text from a trained checkpoint or a Hugging Face folder.

    scratchgpt sample --ckpt runs/mini --prompt "def " --max-new-tokens 200
    scratchgpt sample --ckpt path/to/gpt2 --prompt "Hello" --temperature 0     # greedy

Generation keeps each layer's keys and values (a KV cache), so every new token runs one
position through the model instead of the whole prefix. A prompt longer than the context
keeps its last block_size tokens, with a warning.
"""
import argparse
import json
import warnings

import numpy as np

from .checkpoint import load_model
from .train import resolve_backend


def generate_text(model, tokenizer, prompt, max_new_tokens, temperature=1.0, top_k=None,
                  top_p=None, seed=None, num_samples=1, use_cache=True):
    """Complete prompt num_samples times; returns the completions (without the prompt).
    An empty prompt starts from <|endoftext|> (a document boundary) where the tokenizer has
    one, else from the first token id."""
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:
        ids = [tokenizer.eot_id if tokenizer.eot_id is not None else 0]
    if len(ids) > model.cfg.block_size:
        warnings.warn(f"prompt: {len(ids)} tokens is longer than the context "
                      f"({model.cfg.block_size}); keeping the last {model.cfg.block_size}",
                      stacklevel=2)
        ids = ids[-model.cfg.block_size:]
    idx = np.tile(np.asarray(ids, dtype=np.int64), (num_samples, 1))
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         seed=seed, use_cache=use_cache)
    return [tokenizer.decode(row[len(ids):]) for row in out]


def run(args):
    model, _, tok, path = load_model(args.ckpt, backend=resolve_backend(args.backend))
    if args.tokenizer:
        from .tokenizer import load_tokenizer
        tok = load_tokenizer(args.tokenizer)
    if tok is None:
        raise SystemExit(f"sample: {path} holds no tokenizer; pass --tokenizer PATH")
    model.eval()
    samples = generate_text(model, tok, args.prompt, args.max_new_tokens, args.temperature,
                            args.top_k, args.top_p, args.seed, args.num_samples)
    if not args.json:
        for i, s in enumerate(samples):
            if args.num_samples > 1:
                print(f"----- sample {i + 1} -----")
            print(args.prompt + s)
    else:
        print(json.dumps({"ckpt": path, "prompt": args.prompt, "samples": samples}))
    return 0


def register(sub):
    p = sub.add_parser("sample", help="generate text from a checkpoint",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="run folder (its newest checkpoint), checkpoint "
                   "folder, or Hugging Face GPT-2 / GPT-1 folder")
    p.add_argument("--prompt", default="", help="text to continue (default: a new document)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--tokenizer", help="tokenizer path when the checkpoint holds none "
                   "(e.g. GPT-2's folder with vocab.json + merges.txt)")
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "host", "cuda"))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
    return p
