"""Validation loss of any checkpoint on fixed tokens, and where those tokens come from.

The tokens are the validation split's first `max_tokens + 1`, cut into back-to-back windows of
block_size (each token predicted once, with the context since its window began): the same
tokens for every checkpoint of a run, compressed or not, so their losses compare directly.
"""
import math
import os

import numpy as np

from ..errors import MissingFileError, UsageError

DATA_EXPECTED = ("a folder of token shards (*train*.bin / *val*.bin, e.g. RUN/data), a run "
                 "folder holding data/, or a text file")


def _shard_folder(path):
    from ..data import shard_paths
    if path and os.path.isdir(path):
        if shard_paths(path, "val"):
            return path
        sub = os.path.join(path, "data")
        if os.path.isdir(sub) and shard_paths(sub, "val"):
            return sub
    return None


def find_data(data, ckpt, state=None, meta=None):
    """The shard folder (or text file) to evaluate and calibrate on: --data when given, else the
    one the checkpoint's run used (recorded by compress, RUN/data, or train's --data)."""
    if data is not None:
        data = os.path.expanduser(data)
        if os.path.isfile(data):
            return data
        folder = _shard_folder(data)
        if folder is None:
            raise MissingFileError("no validation shards here", data, DATA_EXPECTED)
        return folder
    run = os.path.dirname(os.path.abspath(ckpt))
    candidates = [(meta or {}).get("data"), os.path.join(run, "data"),
                  ((state or {}).get("args") or {}).get("data")]
    for c in candidates:
        folder = _shard_folder(c) if c else None
        if folder:
            return os.path.abspath(folder)
    raise UsageError("cannot tell which data the checkpoint was trained on", f"--ckpt {ckpt}",
                     f"--data: {DATA_EXPECTED}")


def load_tokens(data, split, tokenizer=None):
    """One split of a shard folder, or a whole text file encoded with the checkpoint's tokenizer."""
    from ..data import load_split, read_text
    if os.path.isfile(data):
        if tokenizer is None:
            raise UsageError("the checkpoint holds no tokenizer to encode the text", f"--data {data}",
                             "a folder of token shards")
        return np.asarray(tokenizer.encode(read_text(data)), np.int64)
    return load_split(data, split)


def validation_loss(model, tokens, max_tokens=65536, batch_size=8, progress=False):
    """(mean loss in nats per token, tokens counted) over back-to-back windows of the first
    max_tokens + 1 tokens."""
    from tqdm import tqdm
    T = model.cfg.block_size
    n = min(len(tokens) - 1, max_tokens)
    if n < 1:
        raise UsageError(f"the data holds {len(tokens)} tokens", "--data",
                         "at least 2 tokens to predict one")
    starts = list(range(0, n, T))
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=n, desc="eval", unit="tok", unit_scale=True, disable=not progress) as bar:
            for b in range(0, len(starts), batch_size):
                group = starts[b:b + batch_size]
                # the last window may be short: a batch holds windows of one length
                for length in sorted({min(T, n - s) for s in group}, reverse=True):
                    rows = [s for s in group if min(T, n - s) == length]
                    x = np.stack([np.asarray(tokens[s:s + length], np.int64) for s in rows])
                    y = np.stack([np.asarray(tokens[s + 1:s + length + 1], np.int64) for s in rows])
                    _, loss = model.forward(x, y)
                    total += float(loss) * x.size
                    count += x.size
                    bar.update(x.size)
    finally:
        model._caches = None
        model.train(was_training)
    return total / count, count


def summary(loss, count, size_bytes):
    return {"val_loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count,
            "size_bytes": size_bytes}
