"""AdamW (decoupled weight decay, Loshchilov & Hutter) and global-norm gradient clipping
(docs/gradients/adamw.md). In-place on NumPy arrays, one tensor per call, as a kernel would.

    m <- b1 m + (1 - b1) g
    v <- b2 v + (1 - b2) g^2
    p <- p (1 - lr wd) - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

This is the same arithmetic as torch.optim.AdamW, so the two agree step for step.
Weight decay applies only to matmul weights and embeddings (decays(name, param)).
"""
import math

import numpy as np


def decays(name, param):
    """Decay matrices (matmul weights, embeddings); not biases or layer-norm parameters."""
    return param.ndim >= 2


def update(param, grad, m, v, step, lr, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.0):
    """One AdamW step on one tensor, in place. step counts from 1."""
    if step < 1:
        raise ValueError(f"step: expected an integer >= 1, got {step}")
    for name, a in (("grad", grad), ("m", m), ("v", v)):
        if a.shape != param.shape:
            raise ValueError(f"{name}: expected shape {param.shape} to match param, got {a.shape}")
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    m = ...  # (1) TODO (docs/gradients/adamw.md, in place: the caller holds this array)
    v = ...  # (2) TODO (docs/gradients/adamw.md, in place: the caller holds this array)
    if weight_decay:
        param = ...  # (3) TODO (docs/gradients/adamw.md, in place: the caller holds this array)
    param = ...  # (4) TODO (docs/gradients/adamw.md, in place: the caller holds this array)


def global_norm(grads):
    """sqrt(sum of squares) over every gradient, accumulated in float64."""
    return math.sqrt(sum(float(np.dot(g.ravel().astype(np.float64), g.ravel().astype(np.float64)))
                         for g in grads))


def clip_by_global_norm(grads, max_norm):
    """Scale every gradient in place by max_norm / norm when norm > max_norm. Returns norm."""
    norm = global_norm(grads)
    if max_norm is not None and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads:
            g *= g.dtype.type(scale)
    return norm
