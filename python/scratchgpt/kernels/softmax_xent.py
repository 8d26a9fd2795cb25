"""softmax_xent on the compiled kernels (csrc/softmax_xent.cu): reference.softmax_xent's
interface.

forward(logits [..., V], targets [...]) -> scalar loss (a NumPy float32, as the reference), cache
(logits, targets, stats, count): per row (max, log-sum) with lse = max + log-sum, and the
number of counted rows, all on the device; the backward recomputes the probabilities from them
instead of storing them.
backward(dloss, cache) -> dlogits.
Storage: logits float32, bfloat16 (ml_dtypes) or float16; dlogits of the logits' dtype (rounded
once); the loss and the per-row statistics are float32 whatever the logits' dtype.
"""
import numpy as np

from .embedding import storage_inputs, token_ids


class SoftmaxXent:
    STORES_16BIT = True     # takes and returns bf16 / fp16 arrays (precision.storage_backend)
    def __init__(self, runtime):
        self.rt = runtime

    def forward(self, logits, targets):
        rt = self.rt
        (logits,) = storage_inputs(rt, logits=logits)
        targets = token_ids(rt, targets, "targets")
        rows = logits.size // logits.shape[-1] if logits.ndim and logits.shape[-1] else 0
        loss = rt.empty((1,), np.float32)
        stats = rt.empty((rows, 2), np.float32)
        row_loss = rt.empty((rows,), np.float32)
        count = rt.empty((1,), np.int32)
        status = rt.empty((1,), np.int32)
        rt.lib.softmax_xent_forward(loss, stats, row_loss, count, status, rt.bits(logits), targets,
                                    rt.stream())
        # a scalar as the reference returns; the launcher synchronised already to check the targets
        return np.float32(rt.asnumpy(loss)[0]), (logits, targets, stats, count)

    def backward(self, dloss, cache):
        rt = self.rt
        logits, targets, stats, count = cache
        dlogits = rt.empty(logits.shape, logits.dtype)
        rt.lib.softmax_xent_backward(rt.bits(dlogits), rt.bits(logits), stats, targets, count, float(dloss),
                                     rt.stream())
        return dlogits
