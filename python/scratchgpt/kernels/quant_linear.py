"""quant_linear on the compiled kernels (csrc/quant_linear.cu): reference.quant_linear's interface.

forward(x [..., K], qw: QuantizedWeight, bias [N] or None) -> out [..., N], cache. x, bias and
out are float32, bfloat16 (ml_dtypes) or float16; the weight stays int8 / packed int4 and is
dequantised in registers. Up to `gemv_max_rows` rows (one decode step) run the GEMV kernel, more
the GEMM (`version`: 0 auto, 1 GEMM, 2 GEMV). int8 codes cross the binding as their uint8 bits,
bfloat16 as its uint16 bits.

`on_backend(qw)` copies a QuantizedWeight's arrays to this backend (the GPU for cuda) once, so a
model holds them there. `dequantize(qw)` runs the kernels' dequantisation (float32 [N, K]).
"""
import numpy as np

from ..reference.quant_linear import QuantizedWeight

VERSIONS = (0, 1, 2)


class QuantLinear:
    STORES_16BIT = True

    def __init__(self, runtime, version=0):
        if version not in VERSIONS:
            raise ValueError(f"version: expected 0 (auto), 1 (GEMM) or 2 (GEMV), got {version!r}")
        self.rt = runtime
        self.version = version
        self.gemv_max_rows = runtime.lib.quant_linear_gemv_max_rows()

    def on_backend(self, qw):
        rt = self.rt
        return QuantizedWeight(qw.bits, rt.asarray(np.ascontiguousarray(qw.qweight)),
                               rt.asarray(np.ascontiguousarray(qw.scale)),
                               None if qw.zero is None else rt.asarray(np.ascontiguousarray(qw.zero)),
                               qw.group_size)

    def _weights(self, qw):
        if not isinstance(qw, QuantizedWeight):
            raise TypeError(f"qw: expected a QuantizedWeight, got {type(qw).__name__}")
        rt = self.rt
        q = rt.input("qweight", qw.qweight)
        if q.dtype not in (np.int8, np.uint8):
            raise TypeError(f"qweight: expected int8 or uint8 codes, got {q.dtype}")
        zero = None if qw.zero is None else rt.input("zero", qw.zero)
        return q.view(np.uint8), rt.input("scale", qw.scale), zero

    def forward(self, x, qw, bias=None):
        rt = self.rt
        (x,) = rt.inputs(x=x)
        if bias is not None:
            (bias,) = rt.inputs(bias=bias)
        if x.ndim == 0:
            raise ValueError("x: expected at least 1 dimension ([..., K]), got a scalar")
        q, scale, zero = self._weights(qw)
        out = rt.empty(x.shape[:-1] + (qw.shape[0],), x.dtype)
        rt.lib.quant_linear_forward(rt.bits(out), rt.bits(x), q, scale, zero, rt.bits(bias),
                                    qw.bits, qw.group_size, self.version, rt.stream())
        return out, (x.shape, qw)

    def backward(self, dout, cache):
        raise NotImplementedError("quant_linear: a quantised layer is inference-only "
                                  "(compress prunes and recovers before it quantises)")

    def dequantize(self, qw):
        rt = self.rt
        q, scale, zero = self._weights(qw)
        out = rt.empty(qw.shape, np.float32)
        rt.lib.quant_linear_dequantize(out, q, scale, zero, qw.bits, qw.group_size, rt.stream())
        return out
