"""GELU activation (docs/gradients/gelu.md).

    tanh form (GPT-1/2/3): 0.5 x (1 + tanh(s (x + c x^3))),  s = sqrt(2/pi), c = 0.044715
    exact form:            0.5 x (1 + erf(x / sqrt(2)))
"""
import math

import numpy as np

from ._checks import check_float

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_COEF = 0.044715

_erf = np.vectorize(math.erf, otypes=[np.float64])


def forward(x, approximate="tanh"):
    """x [...] -> out [...], cache (x, approximate, the gate (1 + tanh u)/2 or None)."""
    check_float("x", x)
    if approximate == "tanh":
        # Updated in place: a fresh temporary per step costs page faults at these sizes.
        # x * x * x, not x ** 3: NumPy's float32 power is ~100x slower than two multiplies.
        u = x * x
        u *= x
        u *= GELU_COEF
        u += x
        u *= SQRT_2_OVER_PI                                    # (1) u = s (x + c x^3)
        gate = np.tanh(u, out=u)
        gate += 1.0
        gate *= 0.5                                            # gate = (1 + tanh u) / 2
        out = gate * x                                         # (2) 0.5 x (1 + tanh u)
        return out, (x, approximate, gate)                     # gate kept: the backward needs it

    if approximate == "none":
        out = 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(x.dtype))
        return out, (x, approximate, None)
    raise ValueError(f"approximate: expected 'tanh' or 'none', got {approximate!r}")


def backward(dout, cache):
    x, approximate, gate = cache
    if approximate == "tanh":
        # 1 - tanh^2 u = 4 gate (1 - gate), so (4) reads gate (1 + x (1 - gate) 2 du/dx)
        two_du = ...  # (3) TODO (docs/gradients/gelu.md)
        grad = ...  # (4) TODO (docs/gradients/gelu.md)
        grad *= dout
        return grad
    else:
        cdf = ...  # (5) TODO (docs/gradients/gelu.md)
        pdf = ...  # (6) TODO (docs/gradients/gelu.md)
        grad = ...  # (7) TODO (docs/gradients/gelu.md)
    return dout * grad
