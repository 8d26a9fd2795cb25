"""linear on the compiled kernels (csrc/linear.cu): reference.linear's interface.

forward(x [..., IN], weight [OUT, IN], bias [OUT] or None) -> out [..., OUT], cache
(x, weight, has_bias) as the reference keeps it. backward(dout, cache) -> dx, dweight, dbias
(None without a bias).

Storage: float32, or bfloat16 (ml_dtypes) / float16 for mixed precision, picked by x's dtype;
weight, bias and dout must match it. With 16-bit storage out and dx are that type (each one
rounding of an fp32 sum; the bias is added in fp32 before it), while dweight and dbias are
float32 (parameter gradients are fp32). bfloat16 crosses the binding as its uint16 bits.

`version` picks the matmul kernel: 2 (default) the tiled, register-blocked SGEMM for float32 and
the tensor-core GEMM (mma.sync, ldmatrix, cp.async) for bfloat16 / float16; 1 the naive
thread-per-output baseline kept for study and comparison (`Linear(rt, version=1)`, or set
`backend.linear.version = 1`).
"""
import math

import numpy as np

VERSIONS = (1, 2)


def _like_x(x, **others):
    """Each of `others` (None allowed) has x's storage dtype: TypeError naming the one that does not."""
    for name, a in others.items():
        if a is not None and a.dtype != x.dtype:
            raise TypeError(f"{name}: expected {x.dtype} like x, got {a.dtype}")


class Linear:
    STORES_16BIT = True     # takes and returns bf16 / fp16 arrays (precision.storage_backend)
    def __init__(self, runtime, version=2):
        self.rt = runtime
        self.version = version

    @property
    def version(self):
        return self._version

    @version.setter
    def version(self, v):
        if v not in VERSIONS:
            raise ValueError(f"version: expected 1 (naive) or 2 (tiled), got {v!r}")
        self._version = v

    def forward(self, x, weight, bias=None):
        rt = self.rt
        x, weight = rt.inputs(x=x, weight=weight)
        if bias is not None:
            (bias,) = rt.inputs(bias=bias)
        if x.ndim == 0:
            raise ValueError("x: expected at least 1 dimension ([..., IN]), got a scalar")
        if weight.ndim != 2:
            raise ValueError(f"weight: expected 2 dimensions [OUT, IN], got shape {weight.shape}")
        _like_x(x, weight=weight, bias=bias)
        out = rt.empty(x.shape[:-1] + (weight.shape[0],), x.dtype)
        rt.lib.linear_forward(rt.bits(out), rt.bits(x), rt.bits(weight), rt.bits(bias), self.version,
                              rt.stream())
        return out, (x, weight, bias is not None)

    def backward(self, dout, cache):
        rt = self.rt
        x, weight, has_bias = cache
        (dout,) = rt.inputs(dout=dout)
        _like_x(x, dout=dout)
        rows = math.prod(x.shape[:-1])
        dx = rt.empty(x.shape, x.dtype)
        dweight = rt.empty(weight.shape, np.float32)          # parameter gradients: fp32
        dbias = rt.empty(weight.shape[:1], np.float32) if has_bias else None
        workspace = rt.empty((rt.lib.linear_backward_workspace(rows, *weight.shape[::-1]),), np.float32)
        rt.lib.linear_backward(rt.bits(dx), dweight, dbias, workspace, rt.bits(dout), rt.bits(x),
                               rt.bits(weight), self.version, rt.stream())
        return dx, dweight, dbias
