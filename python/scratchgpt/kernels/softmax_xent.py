"""softmax_xent on the compiled kernels (csrc/softmax_xent.cu): reference.softmax_xent's
interface.

forward(logits [..., V], targets [...]) -> scalar loss (float32; a 0-d array on cuda), cache
(logits, targets, stats, count): per row (max, log-sum) with lse = max + log-sum, and the
number of counted rows, all on the device; the backward recomputes the probabilities from them
instead of storing them.
backward(dloss, cache) -> dlogits.
"""
import numpy as np

from .embedding import token_ids


class SoftmaxXent:
    def __init__(self, runtime):
        self.rt = runtime

    def forward(self, logits, targets):
        rt = self.rt
        (logits,) = rt.inputs(logits=logits)
        targets = token_ids(rt, targets, "targets")
        rows = logits.size // logits.shape[-1] if logits.ndim and logits.shape[-1] else 0
        loss = rt.empty((1,))
        stats = rt.empty((rows, 2))
        row_loss = rt.empty((rows,))
        count = rt.empty((1,), np.int32)
        status = rt.empty((1,), np.int32)
        rt.lib.softmax_xent_forward(loss, stats, row_loss, count, status, logits, targets, rt.stream())
        value = np.float32(loss[0]) if rt.backend == "host" else loss.reshape(())
        return value, (logits, targets, stats, count)

    def backward(self, dloss, cache):
        rt = self.rt
        logits, targets, stats, count = cache
        dlogits = rt.empty(logits.shape)
        rt.lib.softmax_xent_backward(dlogits, logits, stats, targets, count, float(dloss), rt.stream())
        return dlogits
