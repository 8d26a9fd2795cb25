"""adamw on the compiled kernels (csrc/adamw.cu): reference.adamw's interface.

update(param, grad, m, v, step, lr, ..., lowp=None) in place; global_norm(grads) -> float, a
deterministic two-stage reduction (the same bits run to run); clip_by_global_norm(grads, max_norm)
-> the norm before clipping, scaling the gradients in place when it exceeds max_norm.

Storage: param, grad, m and v are float32 (the masters, their gradients and moments) whatever the
model stores. lowp (optional) is a bfloat16 (ml_dtypes) or float16 array of param's shape: the
update also writes the new param rounded once to lowp's type into it (the working copy the next
forward reads, e.g. model.params_lp[name]), fused into the same pass; None writes nothing.
"""
import numpy as np

from .embedding import storage_inputs


class AdamW:
    def __init__(self, runtime):
        self.rt = runtime

    def update(self, param, grad, m, v, step, lr, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.0,
               lowp=None):
        rt = self.rt
        param, grad, m, v = rt.inputs(param=param, grad=grad, m=m, v=v)
        if lowp is not None:
            (lowp,) = storage_inputs(rt, lowp=lowp)
        if int(step) != step:
            raise ValueError(f"step: expected an integer >= 1, got {step}")
        rt.lib.adamw_update(param, grad, m, v, int(step), float(lr), float(beta1), float(beta2),
                            float(eps), float(weight_decay), lowp=rt.bits(lowp), stream=rt.stream())

    def global_norm(self, grads):
        rt = self.rt
        grads = [rt.input(f"grads[{i}]", g) for i, g in enumerate(grads)]
        blocks = [rt.lib.global_norm_blocks(g.size) for g in grads]
        partials = rt.empty((sum(blocks),), np.float64)
        start = 0
        for g, count in zip(grads, blocks):
            rt.lib.global_norm_partials(partials[start:start + count], g, rt.stream())
            start += count
        norm = rt.empty((1,), np.float64)
        rt.lib.global_norm_finish(norm, partials, rt.stream())
        return float(norm[0])

    def clip_by_global_norm(self, grads, max_norm):
        rt = self.rt
        grads = [rt.input(f"grads[{i}]", g) for i, g in enumerate(grads)]
        norm = self.global_norm(grads)
        if max_norm is not None and norm > max_norm:
            factor = float(np.float32(max_norm / (norm + 1e-6)))
            for g in grads:
                rt.lib.global_norm_clip(g, factor, rt.stream())
        return norm
