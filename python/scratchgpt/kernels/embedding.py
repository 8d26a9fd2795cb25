"""embedding on the compiled kernels (csrc/embedding.cu): reference.embedding's interface.

forward(idx [B, T], wte [V, C], wpe [Tmax, C]) -> out [B, T, C], cache (idx, wte.shape,
wpe.shape) as the reference keeps it. backward(dout, cache) -> dwte, dwpe; dwte is summed per
token id in a fixed order, so repeated runs give the same bits.
Storage: wte and wpe of one dtype T, float32, bfloat16 (ml_dtypes) or float16 (the working copy
of the parameters); out and dout are T; dwte and dwpe are float32 whatever T is.
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
    STORES_16BIT = True     # takes and returns bf16 / fp16 arrays (precision.storage_backend)
    def __init__(self, runtime):
        self.rt = runtime

    def forward(self, idx, wte, wpe):
        rt = self.rt
        idx = token_ids(rt, idx)
        wte, wpe = storage_inputs(rt, wte=wte, wpe=wpe)
        if idx.ndim != 2:
            raise ValueError(f"idx: expected 2 dimensions, got shape {tuple(idx.shape)}")
        out = rt.empty(tuple(idx.shape) + (wte.shape[-1] if wte.ndim else 0,), wte.dtype)
        status = rt.empty((1,), np.int32)
        rt.lib.embedding_forward(rt.bits(out), idx, rt.bits(wte), rt.bits(wpe), status, rt.stream())
        return out, (idx, tuple(wte.shape), tuple(wpe.shape))

    def backward(self, dout, cache):
        rt = self.rt
        idx, wte_shape, wpe_shape = cache
        (dout,) = storage_inputs(rt, dout=dout)
        dwte = rt.empty(wte_shape, np.float32)
        dwpe = rt.empty(wpe_shape, np.float32)
        workspace = rt.empty((rt.lib.embedding_backward_workspace(wte_shape[0], idx.size),), np.int32)
        rt.lib.embedding_backward(dwte, dwpe, workspace, rt.bits(dout), idx, rt.stream())
        return dwte, dwpe
