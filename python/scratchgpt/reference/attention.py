"""Multi-head causal self-attention core from the packed q, k, v projection
(docs/gradients/attention.md).

    q, k, v = split(qkv)                         each [B, H, T, D], D = C / H
    S = q k^T / sqrt(D) + M                      M = 0 where allowed, -inf elsewhere
    P = softmax(S)  (over keys)
    y = P v, heads merged back to [B, T, C]

Masks: causal (t attends to s <= t) or GPT-3's locally banded causal window of width w
(t attends to t-w+1 .. t). The cache holds q, k, v and P (B*H*T*T numbers per layer):
the reference materialises P on purpose, it is the object the derivation talks about.
"""
import math

import numpy as np

from ._checks import check_float, check_ndim


def allowed_mask(T, window=None, t0=0, S=None):
    """Boolean [T, S]: True where query t0+i may attend to key j. window=None: plain causal."""
    S = T + t0 if S is None else S
    q = np.arange(t0, t0 + T)[:, None]
    k = np.arange(S)[None, :]
    ok = k <= q
    if window is not None:
        ok &= k > q - window
    return ok


def _check(qkv, n_head, window):
    check_float("qkv", qkv)
    check_ndim("qkv", qkv, 3)
    if not isinstance(n_head, (int, np.integer)) or n_head < 1:
        raise ValueError(f"n_head: expected a positive integer, got {n_head!r}")
    C3 = qkv.shape[-1]
    if C3 % (3 * n_head):
        raise ValueError(f"qkv: last axis {C3} must be 3 * n_head * head_dim (n_head={n_head})")
    if window is not None and (not isinstance(window, (int, np.integer)) or window < 1):
        raise ValueError(f"window: expected None or a positive integer, got {window!r}")


def split_heads(qkv, n_head):
    """[B, T, 3C] -> three [B, H, T, D] views."""
    B, T, C3 = qkv.shape
    D = C3 // (3 * n_head)
    x = qkv.reshape(B, T, 3, n_head, D).transpose(2, 0, 3, 1, 4)
    return x[0], x[1], x[2]


def merge_heads(y):
    """[B, H, T, D] -> [B, T, H*D]."""
    B, H, T, D = y.shape
    return y.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def softmax(s, out=None):
    """Row softmax over the last axis; out=s overwrites the scores (no B*H*T*T temporaries)."""
    out = np.subtract(s, s.max(axis=-1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=-1, keepdims=True)
    return out


def forward(qkv, n_head, window=None):
    """qkv [B, T, 3C] -> y [B, T, C], cache (q, k, v, P, scale = 1/sqrt(D))."""
    _check(qkv, n_head, window)
    q, k, v = split_heads(qkv, n_head)
    T, D = q.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(D)
    s = q @ k.transpose(0, 1, 3, 2)
    s *= scale                                                 # (1) scores
    s += np.where(allowed_mask(T, window), 0.0, -np.inf).astype(s.dtype)   # (2) mask M (diagonal always allowed)
    p = softmax(s, out=s)                                      # (3)
    y = p @ v                                                  # (4)
    return merge_heads(y), (q, k, v, p, scale)


def backward(dy, cache):
    """dy [B, T, C] -> dqkv [B, T, 3C]."""
    q, k, v, p, scale = cache
    B, H, T, D = q.shape
    dy = dy.reshape(B, T, H, D).transpose(0, 2, 1, 3)          # [B, H, T, D]
    dv = p.transpose(0, 1, 3, 2) @ dy                          # (5) dV = P^T dY
    dp = dy @ v.transpose(0, 1, 3, 2)                          # (6) dP = dY V^T
    ds = np.subtract(dp, (dp * p).sum(axis=-1, keepdims=True), out=dp)   # in place: no T*T temporary
    ds *= p                                                    # (7) softmax Jacobian; masked P = 0
    dqkv = np.empty((B, T, 3, H, D), dtype=dy.dtype)           # the packed layout of qkv
    dqkv[:, :, 0] = (ds @ k).transpose(0, 2, 1, 3) * scale                     # (8)
    dqkv[:, :, 1] = (ds.transpose(0, 1, 3, 2) @ q).transpose(0, 2, 1, 3) * scale   # (9)
    dqkv[:, :, 2] = dv.transpose(0, 2, 1, 3)
    return dqkv.reshape(B, T, 3 * H * D)


def decode(q, k_cache, v_cache, t0, window=None):
    """Attention of new queries against a key/value cache (inference, no backward).

    q [B, H, Tn, D] at positions t0 .. t0+Tn-1; k_cache, v_cache [B, H, S, D] hold
    positions 0 .. S-1 with S = t0 + Tn. Returns y [B, Tn, H*D].
    """
    D = q.shape[-1]
    S = k_cache.shape[2]
    s = (q @ k_cache.transpose(0, 1, 3, 2)) / math.sqrt(D)
    s = np.where(allowed_mask(q.shape[2], window, t0=t0, S=S), s, -np.inf)
    return merge_heads(softmax(s) @ v_cache)
