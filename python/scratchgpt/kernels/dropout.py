"""dropout on the compiled kernels (csrc/dropout.cu): reference.dropout's interface and masks.

forward(x, p, seed, stream=0, offset=0, training=True) -> out, cache. The kernel draws the same
Philox-4x32-10 mask as the reference, bit for bit. The cache holds the generator's inputs, not
the mask: the backward regenerates it. A cache of (None, 1.0) (dropout off) passes dout through,
as in the reference.
Storage: x (and dout) float32, bfloat16 (ml_dtypes) or float16; out (and dx) of the same dtype,
x * scale formed in float32 and rounded once (the mask does not depend on the dtype).
"""
import numpy as np

from ..reference.dropout import threshold
from .embedding import storage_inputs


class Dropout:
    STORES_16BIT = True     # takes and returns bf16 / fp16 arrays (precision.storage_backend)
    def __init__(self, runtime):
        self.rt = runtime

    def forward(self, x, p, seed, stream=0, offset=0, training=True):
        rt = self.rt
        (x,) = storage_inputs(rt, x=x)
        thr = threshold(p)
        for name, value in (("seed", seed), ("stream", stream), ("offset", offset)):
            if int(value) != value or not 0 <= int(value) < 2 ** 64:
                raise ValueError(f"{name}: expected an integer in [0, 2**64), got {value!r}")
        if not training or thr == 0:
            return x, (None, 1.0)
        scale = np.float32(1.0 / (1.0 - p))
        mask = (int(seed), int(stream), int(offset), thr, float(scale))
        return self._apply(x, mask), (mask, scale)

    def backward(self, dout, cache):
        mask, _ = cache
        if mask is None:
            return dout
        (dout,) = storage_inputs(self.rt, dout=dout)
        return self._apply(dout, mask)

    def _apply(self, x, mask):
        rt = self.rt
        seed, stream, offset, thr, scale = mask
        out = rt.empty(x.shape, x.dtype)
        rt.lib.dropout_apply(rt.bits(out), rt.bits(x), thr, scale, seed, stream, offset, rt.stream())
        return out
