"""residual on the compiled kernels (csrc/residual.cu): reference.residual's interface.

forward(a, b) -> a + b, None; backward(dout, cache=None) -> (dout, dout), no kernel and no copy
(the gradient of a sum reaches both inputs unchanged). accumulate(acc, b) adds b into acc in
place and returns acc: the same kernel with the output aliasing its first input.
Storage: a and b of one dtype, float32, bfloat16 (ml_dtypes) or float16; the sum is formed in
float32 and rounded once to that dtype (float32 operands, e.g. two parameter gradients, are
added in float32).
"""
from .embedding import storage_inputs


class Residual:
    STORES_16BIT = True     # takes and returns bf16 / fp16 arrays (precision.storage_backend)
    def __init__(self, runtime):
        self.rt = runtime

    def forward(self, a, b):
        rt = self.rt
        a, b = storage_inputs(rt, a=a, b=b)
        out = rt.empty(a.shape, a.dtype)
        rt.lib.residual_forward(rt.bits(out), rt.bits(a), rt.bits(b), rt.stream())
        return out, None

    def backward(self, dout, cache=None):
        return dout, dout

    def accumulate(self, acc, b):
        rt = self.rt
        acc, b = storage_inputs(rt, acc=acc, b=b)
        rt.lib.residual_forward(rt.bits(acc), rt.bits(acc), rt.bits(b), rt.stream())
        return acc
