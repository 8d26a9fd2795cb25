"""gelu on the compiled kernels (csrc/gelu.cu): reference.gelu's interface.

forward(x, approximate="tanh" | "none") -> out, cache (x, approximate); backward(dout, cache) -> dx.
"tanh" is the GPT-1/2/3 approximation, "none" the exact erf form (GPTConfig.gelu).
"""


class Gelu:
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
        (x,) = rt.inputs(x=x)
        out = rt.empty(x.shape)
        rt.lib.gelu_forward(out, x, mode, rt.stream())
        return out, (x, approximate)

    def backward(self, dout, cache):
        rt = self.rt
        x, approximate = cache
        mode = self._mode(approximate)
        (dout,) = rt.inputs(dout=dout)
        dx = rt.empty(x.shape)
        rt.lib.gelu_backward(dx, dout, x, mode, rt.stream())
        return dx
