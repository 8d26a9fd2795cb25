"""Residual connection: out = a + b (docs/gradients/residual.md). The gradient flows to both."""
from ._checks import check_float, check_same_dtype


def forward(a, b):
    check_float("a", a)
    check_float("b", b)
    if a.shape != b.shape:
        raise ValueError(f"b: expected shape {a.shape} to match a, got {b.shape}")
    check_same_dtype(("a", "b"), a, b)
    out = a + b                                                # (1)
    return out, None


def backward(dout, cache=None):
    da = dout                                                  # (2) the skip path: copied
    db = dout                                                  # (3) the branch: copied
    return da, db
