"""GELU activation (docs/gradients/gelu.md).

    tanh form (GPT-1/2/3): 0.5 x (1 + tanh(s (x + 0.044715 x^3))),  s = sqrt(2/pi)
    exact form:            0.5 x (1 + erf(x / sqrt(2)))
"""
import math

import numpy as np

from ._checks import check_float

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_COEF = 0.044715

_erf = np.vectorize(math.erf, otypes=[np.float64])


def forward(x, approximate="tanh"):
    """x [...] -> out [...], cache (x, approximate, tanh(u) or None)."""
    check_float("x", x)
    if approximate == "tanh":
        # x * x * x, not x ** 3: NumPy's float32 power is ~100x slower than two multiplies
        u = SQRT_2_OVER_PI * (x + GELU_COEF * (x * x * x))    # (1)
        th = np.tanh(u)
        out = 0.5 * x * (1.0 + th)                             # (2)
        return out, (x, approximate, th)                       # tanh(u) kept: the backward needs it
    if approximate == "none":
        out = 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(x.dtype))
        return out, (x, approximate, None)
    raise ValueError(f"approximate: expected 'tanh' or 'none', got {approximate!r}")


def backward(dout, cache):
    x, approximate, th = cache
    if approximate == "tanh":
        du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_COEF * x * x)  # (3)
        grad = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du   # (4)
    else:
        cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)).astype(x.dtype))
        pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        grad = cdf + x * pdf
    return dout * grad
