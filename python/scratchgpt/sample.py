"""`scratchgpt sample`: generate text from a trained checkpoint or a Hugging Face folder.

    scratchgpt sample --ckpt runs/mini --prompt "def " --max-new-tokens 200
    scratchgpt sample --ckpt path/to/gpt2 --prompt "Hello" --temperature 0     # greedy
    scratchgpt sample --ckpt runs/mini --precision bf16   # the forward in bf16 storage

Generation keeps each layer's keys and values (a KV cache), so every new token runs one
position through the model instead of the whole prefix. A prompt longer than the context
keeps its last block_size tokens, with a warning.

The memory of the model and its KV cache is estimated before the weights are read; a run that
does not fit is refused with the estimate (memory.py).
"""
import argparse
import json
import warnings

import numpy as np

from . import memory
from .checkpoint import load_model, model_config
from .cli import nonneg_float, nonneg_int, positive_int, top_p_type
from .errors import UsageError
from .gru_model import is_gru, sampling_estimate as gru_sampling_estimate
from .precision import check_supported
from .train import add_precision_arguments, resolve_backend


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


def check_memory(cfg, args, backend, dtype="float32", precision="fp32"):
    """Refuse before loading when the weights, the KV cache and generation's temporaries do
    not fit (the prompt is counted as one token per byte, an upper bound)."""
    prompt = len(args.prompt.encode("utf-8"))

    def estimate(n):
        if is_gru(cfg):
            return gru_sampling_estimate(cfg, n, prompt, backend, dtype)
        return memory.sampling_estimate(cfg, n, prompt, args.max_new_tokens, backend, dtype,
                                        precision=precision)
    memory.check(estimate(args.num_samples), f"--ckpt {args.ckpt} --num-samples "
                 f"{args.num_samples} on {backend}", make_estimate=estimate,
                 batch_size=args.num_samples, batch_flag="--num-samples")


def run(args):
    from .tokenizer import load_tokenizer
    backend = resolve_backend(args.backend)
    check_supported(backend, args.precision, f"--precision {args.precision} --backend {backend}")
    check_memory(model_config(args.ckpt), args, backend, precision=args.precision)
    extra_tok = load_tokenizer(args.tokenizer) if args.tokenizer else None
    model, _, tok, path = load_model(args.ckpt, backend=backend, precision=args.precision)
    tok = extra_tok or tok
    if tok is None:
        raise UsageError("the checkpoint holds no tokenizer", f"--ckpt {path}",
                         "--tokenizer PATH (e.g. GPT-2's folder with vocab.json + merges.txt)")
    if tok.vocab_size > model.cfg.vocab_size:
        raise UsageError(f"the tokenizer has {tok.vocab_size} ids, more than the model's "
                         f"vocabulary of {model.cfg.vocab_size}",
                         f"--tokenizer {args.tokenizer}" if args.tokenizer else path,
                         "the tokenizer the model was trained with")
    try:
        tok.encode(args.prompt)
    except ValueError as e:               # the char tokenizer does not know a character
        raise UsageError(f"the tokenizer cannot encode the prompt: {e}", "--prompt",
                         "text made of the characters the model was trained on") from None
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
    p.add_argument("--max-new-tokens", type=nonneg_int, default=200)
    p.add_argument("--temperature", type=nonneg_float, default=0.8,
                   help="0: greedy (default 0.8)")
    p.add_argument("--top-k", type=positive_int, default=None)
    p.add_argument("--top-p", type=top_p_type, default=None)
    p.add_argument("--seed", type=nonneg_int, default=None)
    p.add_argument("--num-samples", type=positive_int, default=1)
    p.add_argument("--tokenizer", help="tokenizer path when the checkpoint holds none "
                   "(e.g. GPT-2's folder with vocab.json + merges.txt)")
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "host", "cuda"))
    add_precision_arguments(p, scaler=False)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
    return p
