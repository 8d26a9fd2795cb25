"""embedding on the compiled kernels (csrc/embedding.cu): reference.embedding's interface.

forward(idx [B, T], wte [V, C], wpe [Tmax, C]) -> out [B, T, C], cache (idx, wte.shape,
wpe.shape) as the reference keeps it. backward(dout, cache) -> dwte, dwpe; dwte is summed per
token id in a fixed order, so repeated runs give the same bits.
"""
import numpy as np


def token_ids(rt, idx, name="idx"):
    """idx as an int32 / int64 array of the backend (other integer dtypes are widened)."""
    if not hasattr(idx, "dtype"):
        raise TypeError(f"{name}: expected an array of integers, got {type(idx).__name__}")
    if np.dtype(idx.dtype).kind not in "iu":
        raise TypeError(f"{name}: expected an integer dtype, got {idx.dtype}")
    idx = rt.input(name, idx)
    if idx.dtype not in (np.int32, np.int64):
        idx = idx.astype(np.int64)
    return idx


def storage_inputs(rt, **arrays):
    """The arrays as the backend's, each of a storage type: float32, bfloat16 (ml_dtypes) or
    float16 (Runtime.input lets integer arrays through for token ids; here they are refused, so
    a uint16 array is never read as bfloat16 bits). Pass them to the bindings through rt.bits."""
    out = []
    for name, a in arrays.items():
        a = rt.input(name, a)
        if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
            raise TypeError(f"{name}: expected float32, bfloat16 or float16 values, got {a.dtype}")
        out.append(a)
    return out


class Embedding:
    def __init__(self, runtime):
        self.rt = runtime

    def forward(self, idx, wte, wpe):
        rt = self.rt
        idx = token_ids(rt, idx)
        wte, wpe = rt.inputs(wte=wte, wpe=wpe)
        if idx.ndim != 2:
            raise ValueError(f"idx: expected 2 dimensions, got shape {tuple(idx.shape)}")
        out = rt.empty(tuple(idx.shape) + (wte.shape[-1] if wte.ndim else 0,))
        status = rt.empty((1,), np.int32)
        rt.lib.embedding_forward(out, idx, wte, wpe, status, rt.stream())
        return out, (idx, tuple(wte.shape), tuple(wpe.shape))

    def backward(self, dout, cache):
        rt = self.rt
        idx, wte_shape, wpe_shape = cache
        (dout,) = rt.inputs(dout=dout)
        dwte = rt.empty(wte_shape)
        dwpe = rt.empty(wpe_shape)
        workspace = rt.empty((rt.lib.embedding_backward_workspace(wte_shape[0], idx.size),), np.int32)
        rt.lib.embedding_backward(dwte, dwpe, workspace, dout, idx, rt.stream())
        return dwte, dwpe
