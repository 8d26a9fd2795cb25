"""Layer normalisation over the last axis (docs/gradients/layernorm.md).

    mean = x.mean(-1);  rstd = 1 / sqrt(var(x) + eps);  xhat = (x - mean) * rstd
    out  = xhat * weight + bias
"""
import numpy as np

from ._checks import check_float, check_shape, check_same_dtype


def forward(x, weight, bias, eps=1e-5):
    """x [..., C], weight [C], bias [C] -> out [..., C], cache (x, mean, rstd, weight)."""
    check_float("x", x)
    check_float("weight", weight)
    check_float("bias", bias)
    C = x.shape[-1]
    check_shape("weight", weight, (C,))
    check_shape("bias", bias, (C,))
    check_same_dtype(("x", "weight", "bias"), x, weight, bias)
    mean = x.mean(axis=-1, keepdims=True)                      # (1)
    xc = x - mean
    var = (xc * xc).mean(axis=-1, keepdims=True)               # (2) biased variance
    rstd = 1.0 / np.sqrt(var + eps)                            # (3)
    out = xc * rstd * weight + bias                            # (4)
    return out, (x, mean, rstd, weight)


def backward(dout, cache):
    """Compact form: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * weight."""
    x, mean, rstd, weight = cache
    xhat = (x - mean) * rstd
    red = tuple(range(x.ndim - 1))
    dweight = ...  # (5) TODO (docs/gradients/layernorm.md)
    dbias = ...  # (6) TODO (docs/gradients/layernorm.md)
    g = ...  # (7) TODO (docs/gradients/layernorm.md)
    dx = ...  # (8) TODO (docs/gradients/layernorm.md)
    return dx, dweight, dbias
