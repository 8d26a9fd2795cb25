"""Softmax cross-entropy over the vocabulary, mean over targets that are not -1
(docs/gradients/softmax_xent.md).

    lse_n  = m_n + log sum_j exp(z_nj - m_n),   m_n = max_j z_nj
    loss   = (1/N) sum_{n: y_n != -1} (lse_n - z_{n, y_n}),   N = #{n: y_n != -1}
    dz_nj  = (softmax(z_n)_j - [j == y_n]) / N   for counted rows, 0 for ignored rows
"""
import numpy as np

from ._checks import check_float, check_int

IGNORE = -1


def forward(logits, targets):
    """logits [..., V], targets int [...] -> scalar loss (logits' dtype), cache."""
    check_float("logits", logits)
    check_int("targets", targets)
    V = logits.shape[-1]
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets: expected shape {logits.shape[:-1]} to match logits, "
                         f"got {targets.shape}")
    z = logits.reshape(-1, V)
    y = targets.reshape(-1)
    bad = (y != IGNORE) & ((y < 0) | (y >= V))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"targets: value {int(y[i])} at flat position {i} is outside "
                         f"[0, {V}) and is not the ignore value {IGNORE}")
    keep = y != IGNORE
    n = int(keep.sum())
    m = z.max(axis=-1)                                         # (1) row max
    lse = m + np.log(np.exp(z - m[:, None]).sum(axis=-1))      # (2) log-sum-exp
    yc = np.where(keep, y, 0)
    picked = z[np.arange(z.shape[0]), yc]
    nll = np.where(keep, lse - picked, 0.0)                    # (3)
    loss = nll.sum() / max(n, 1)                               # (4) mean over counted rows
    return logits.dtype.type(loss), (logits, lse, yc, keep, n)


def backward(dloss, cache):
    """-> dlogits with logits' shape: dloss * (p - onehot) / N on counted rows."""
    logits, lse, yc, keep, n = cache
    V = logits.shape[-1]
    z = logits.reshape(-1, V)
    p = ...  # (5) TODO (docs/gradients/softmax_xent.md)
    p = ...  # (6) TODO (docs/gradients/softmax_xent.md)
    p = ...  # (7) TODO (docs/gradients/softmax_xent.md)
    return p.reshape(logits.shape)
