"""layernorm on the compiled kernels (csrc/layernorm.cu): reference.layernorm's interface.

forward(x [..., C], weight [C], bias [C], eps) -> out, cache (x, mean, rstd, weight), where mean
and rstd are float32 [..., 1] exactly as the reference keeps them. backward(dout, cache) ->
dx, dweight, dbias.
Storage: x, weight and bias of one dtype T, float32, bfloat16 (ml_dtypes) or float16 (weight and
bias the working copy of the parameters); out, dout and dx are T; mean and rstd, and the
parameter gradients dweight and dbias, are float32 whatever T is.
"""
import numpy as np

from .embedding import storage_inputs


class LayerNorm:
    STORES_16BIT = True     # takes and returns bf16 / fp16 arrays (precision.storage_backend)
    def __init__(self, runtime):
        self.rt = runtime

    def forward(self, x, weight, bias, eps=1e-5):
        rt = self.rt
        x, weight, bias = storage_inputs(rt, x=x, weight=weight, bias=bias)
        out = rt.empty(x.shape, x.dtype)
        mean = rt.empty(x.shape[:-1] + (1,), np.float32)
        rstd = rt.empty(x.shape[:-1] + (1,), np.float32)
        rt.lib.layernorm_forward(rt.bits(out), mean, rstd, rt.bits(x), rt.bits(weight), rt.bits(bias),
                                 float(eps), rt.stream())
        return out, (x, mean, rstd, weight)

    def backward(self, dout, cache):
        rt = self.rt
        x, mean, rstd, weight = cache
        (dout,) = storage_inputs(rt, dout=dout)
        C = x.shape[-1] if x.ndim else 0
        rows = x.size // C if C else 0
        dx = rt.empty(x.shape, x.dtype)
        dweight = rt.empty(weight.shape, np.float32)
        dbias = rt.empty(weight.shape, np.float32)
        workspace = rt.empty((rt.lib.layernorm_backward_workspace(rows, C),), np.float32)
        rt.lib.layernorm_backward(rt.bits(dx), dweight, dbias, workspace, rt.bits(dout), rt.bits(x),
                                  rt.bits(weight), mean, rstd, rt.stream())
        return dx, dweight, dbias
