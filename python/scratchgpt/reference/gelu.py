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
        two_du = x * x
        two_du *= 6.0 * GELU_COEF * SQRT_2_OVER_PI
        two_du += 2.0 * SQRT_2_OVER_PI                         # (3) 2 du/dx = 2 s (1 + 3 c x^2)
        grad = np.subtract(1.0, gate)
        grad *= x
        grad *= two_du
        grad += 1.0
        grad *= gate                                           # (4) y' = g (1 + x (1 - g) 2 du/dx)
        grad *= dout
        return grad
    else:
        cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)).astype(x.dtype))   # (5) Phi(x)
        pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)          # (6) phi(x) = Phi'(x)
        grad = cdf + x * pdf                                           # (7) Phi + x phi
    return dout * grad
