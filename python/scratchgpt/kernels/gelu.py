"""gelu on the compiled kernels (csrc/gelu.cu): reference.gelu's interface.

forward(x, approximate="tanh" | "none") -> out, cache (x, approximate); backward(dout, cache) -> dx.
"tanh" is the GPT-1/2/3 approximation, "none" the exact erf form (GPTConfig.gelu).
Storage: x is float32, bfloat16 (ml_dtypes) or float16; out, and dout and dx in the backward, are
of x's dtype (computed in float32, rounded once to that type).
"""
from .embedding import storage_inputs


class Gelu:
    STORES_16BIT = True     # takes and returns bf16 / fp16 arrays (precision.storage_backend)
    def __init__(self, runtime):
        self.rt = runtime

    def _mode(self, approximate):
        modes = {"tanh": self.rt.lib.GELU_TANH, "none": self.rt.lib.GELU_EXACT}
        if not isinstance(approximate, str) or approximate not in modes:
            raise ValueError(f"approximate: expected 'tanh' or 'none', got {approximate!r}")
        return modes[approximate]

    def forward(self, x, approximate="tanh"):
        rt = self.rt
        mode = self._mode(approximate)
        (x,) = storage_inputs(rt, x=x)
        out = rt.empty(x.shape, x.dtype)
        rt.lib.gelu_forward(rt.bits(out), rt.bits(x), mode, rt.stream())
        return out, (x, approximate)

    def backward(self, dout, cache):
        rt = self.rt
        x, approximate = cache
        mode = self._mode(approximate)
        (dout,) = storage_inputs(rt, dout=dout)
        dx = rt.empty(x.shape, x.dtype)
        rt.lib.gelu_backward(rt.bits(dx), rt.bits(dout), rt.bits(x), mode, rt.stream())
        return dx
