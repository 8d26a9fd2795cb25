"""Figures of the gradients a student would rather look at than read as numbers
(`scratchgpt gradcheck --show --plot DIR`):

    attention_P.png     the attention probabilities P (3) of one head on a short sentence
    attention_dS.png    their score gradient dS (7): zero above the diagonal, rows summing to 0
    dlogits.png         dlogits (7) of softmax_xent for the same batch: (p - onehot) / N

The sentence is modelled word by word by the nano model (float64, seed 0), trained for a few
dozen AdamW steps on the sentence itself so that the attention is not uniform; the arrays are
recorded by stepwise.Recorder from the reference ops while the model runs, as `--show` does.
"""
import os

import numpy as np

from . import reference as ref
from .config import GPTConfig
from .errors import ScratchError
from .model import GPT
from .optim import AdamW
from .stepwise import Recorder

SENTENCE = "the cat sat on the mat because the mat was warm"
TRAIN_STEPS = 40


def sentence_batch(text=SENTENCE):
    """(words, vocabulary, idx [1, T], targets [1, T]): next-word prediction on one sentence."""
    words = text.split()
    vocab = sorted(set(words))
    ids = np.array([[vocab.index(w) for w in words]])
    targets = np.concatenate([ids[:, 1:], [[-1]]], axis=1)     # the last word has no next word
    return words, vocab, ids, targets


def record_sentence(layer=0, head=0, seed=0):
    """Train the nano model on the sentence, then record one forward and backward.
    Returns (words, vocab, P [T, T], dS [T, T], dlogits [T, V])."""
    words, vocab, idx, targets = sentence_batch()
    cfg = GPTConfig.preset("nano", vocab_size=len(vocab), block_size=max(16, len(words)))
    model = GPT(cfg, backend="numpy", dtype="float64", seed=seed)
    opt = AdamW(model.params, model.be, lr=1e-2, weight_decay=0.0)
    for _ in range(TRAIN_STEPS):
        model.forward(idx, targets)
        opt.step(model.backward())
    with Recorder(ref.attention) as attn, Recorder(ref.softmax_xent) as xent:
        model.forward(idx, targets)
        model.backward()
    # P: the forward runs layers 0, 1, ...; dS: the backward runs them in reverse
    P = [v for n, v in attn.history if n == 3][layer][0, head]
    dS = [v for n, v in attn.history if n == 7][cfg.n_layer - 1 - layer][0, head]
    dlogits = xent.values[7].reshape(len(words), len(vocab))
    return words, vocab, P, dS, dlogits


def write_figures(out_dir):
    """Write the three PNGs into out_dir (created if needed). Returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise ScratchError(f"cannot create the folder: {e.strerror}", f"--plot {out_dir}",
                           "a writable folder") from None
    words, vocab, P, dS, dlogits = record_sentence()
    figures = (
        ("attention_P.png", P, words, words, "viridis", None,
         "P (3): layer 0, head 0 (row t: how query t spreads over keys s <= t)", "key s", "query t"),
        ("attention_dS.png", dS, words, words, "RdBu_r", "sym",
         "dS (7) = P (dP - rowsum(P dP)): 0 above the diagonal, each row sums to 0",
         "key s", "query t"),
        ("dlogits.png", dlogits, vocab, words, "RdBu_r", "sym",
         "dlogits (7) = (p - e_y) / N: one negative entry per row, at the next word (e_y: its one-hot row)",
         "vocabulary", "position (its word)"),
    )
    paths = []
    for name, a, xlabels, ylabels, cmap, sym, title, xlabel, ylabel in figures:
        lim = float(np.abs(a).max()) or 1.0
        fig, ax = plt.subplots(figsize=(1.2 + 0.55 * len(xlabels), 1.2 + 0.5 * len(ylabels)))
        im = ax.imshow(a, cmap=cmap, vmin=-lim if sym else 0.0, vmax=lim if sym else None)
        ax.set_xticks(range(len(xlabels)), xlabels, rotation=60, ha="right")
        ax.set_yticks(range(len(ylabels)), ylabels)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        try:
            fig.savefig(path + ".tmp.png", dpi=100)
            os.replace(path + ".tmp.png", path)
        except OSError as e:
            raise ScratchError(f"cannot write the figure: {e.strerror}", path, "a writable folder") from None
        finally:
            plt.close(fig)
        paths.append(path)
    return paths
