"""Linear layer: a matmul plus bias, weight in [out, in] layout (docs/gradients/linear.md).

    out = x @ W^T + b
"""
from ._checks import check_float, check_ndim, check_shape, check_same_dtype


def forward(x, weight, bias=None):
    """x [..., IN], weight [OUT, IN], bias [OUT] or None -> out [..., OUT],
    cache (x, weight, whether there is a bias)."""
    check_float("x", x)
    check_float("weight", weight)
    check_ndim("weight", weight, 2)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"weight: expected shape (*, {x.shape[-1]}) to match x's last axis, "
                         f"got {weight.shape}")
    if bias is not None:
        check_float("bias", bias)
        check_shape("bias", bias, (weight.shape[0],))
    check_same_dtype(("x", "weight", "bias"), x, weight, bias)
    # matmuls on 2-D views: NumPy's stacked (3-D @ 2-D) product is many times slower
    x2 = x.reshape(-1, x.shape[-1])
    out = x2 @ weight.T                                        # (1)
    if bias is not None:
        out += bias                                            # (2)
    return out.reshape(*x.shape[:-1], weight.shape[0]), (x, weight, bias is not None)


def backward(dout, cache):
    """-> dx [..., IN], dweight [OUT, IN], dbias [OUT] (None when the layer has no bias)."""
    x, weight, has_bias = cache
    d2 = dout.reshape(-1, dout.shape[-1])
    dx = ...  # (3) TODO (docs/gradients/linear.md)
    dweight = ...  # (4) TODO (docs/gradients/linear.md)
    dbias = ...  # (5) TODO (docs/gradients/linear.md)
    return dx, dweight, dbias
