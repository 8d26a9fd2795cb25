"""layernorm on the compiled kernels (csrc/layernorm.cu): reference.layernorm's interface.

forward(x [..., C], weight [C], bias [C], eps) -> out, cache (x, mean, rstd, weight), where mean
and rstd are float32 [..., 1] exactly as the reference keeps them. backward(dout, cache) ->
dx, dweight, dbias.
"""


class LayerNorm:
    def __init__(self, runtime):
        self.rt = runtime

    def forward(self, x, weight, bias, eps=1e-5):
        rt = self.rt
        x, weight, bias = rt.inputs(x=x, weight=weight, bias=bias)
        out = rt.empty(x.shape)
        mean = rt.empty(x.shape[:-1] + (1,))
        rstd = rt.empty(x.shape[:-1] + (1,))
        rt.lib.layernorm_forward(out, mean, rstd, x, weight, bias, float(eps), rt.stream())
        return out, (x, mean, rstd, weight)

    def backward(self, dout, cache):
        rt = self.rt
        x, mean, rstd, weight = cache
        (dout,) = rt.inputs(dout=dout)
        C = x.shape[-1] if x.ndim else 0
        rows = x.size // C if C else 0
        dx = rt.empty(x.shape)
        dweight = rt.empty(weight.shape)
        dbias = rt.empty(weight.shape)
        workspace = rt.empty((rt.lib.layernorm_backward_workspace(rows, C),))
        rt.lib.layernorm_backward(dx, dweight, dbias, workspace, dout, x, weight, mean, rstd,
                                  rt.stream())
        return dx, dweight, dbias
