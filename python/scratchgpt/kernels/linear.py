"""linear on the compiled kernels (csrc/linear.cu): reference.linear's interface.

forward(x [..., IN], weight [OUT, IN], bias [OUT] or None) -> out [..., OUT], cache
(x, weight, has_bias) as the reference keeps it. backward(dout, cache) -> dx, dweight, dbias
(None without a bias).

`version` picks the matmul kernel: 2 (default) the tiled, register-blocked SGEMM; 1 the naive
thread-per-output baseline kept for study and comparison (`Linear(rt, version=1)`, or set
`backend.linear.version = 1`).
"""
import math

VERSIONS = (1, 2)


class Linear:
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
        out = rt.empty(x.shape[:-1] + (weight.shape[0],))
        rt.lib.linear_forward(out, x, weight, bias, self.version, rt.stream())
        return out, (x, weight, bias is not None)

    def backward(self, dout, cache):
        rt = self.rt
        x, weight, has_bias = cache
        (dout,) = rt.inputs(dout=dout)
        rows = math.prod(x.shape[:-1])
        dx = rt.empty(x.shape)
        dweight = rt.empty(weight.shape)
        dbias = rt.empty(weight.shape[:1]) if has_bias else None
        workspace = rt.empty((rt.lib.linear_backward_workspace(rows, *weight.shape[::-1]),))
        rt.lib.linear_backward(dx, dweight, dbias, workspace, dout, x, weight, self.version, rt.stream())
        return dx, dweight, dbias
