"""residual on the compiled kernels (csrc/residual.cu): reference.residual's interface.

forward(a, b) -> a + b, None; backward(dout, cache=None) -> (dout, dout), no kernel and no copy
(the gradient of a sum reaches both inputs unchanged). accumulate(acc, b) adds b into acc in
place and returns acc: the same kernel with the output aliasing its first input.
"""


class Residual:
    def __init__(self, runtime):
        self.rt = runtime

    def forward(self, a, b):
        rt = self.rt
        a, b = rt.inputs(a=a, b=b)
        out = rt.empty(a.shape)
        rt.lib.residual_forward(out, a, b, rt.stream())
        return out, None

    def backward(self, dout, cache=None):
        return dout, dout

    def accumulate(self, acc, b):
        rt = self.rt
        acc, b = rt.inputs(acc=acc, b=b)
        rt.lib.residual_forward(acc, acc, b, rt.stream())
        return acc
