"""Token + learned position embedding (docs/gradients/embedding.md).

    out[b, t, :] = wte[idx[b, t], :] + wpe[t, :]
"""
import numpy as np

from ._checks import check_float, check_int, check_ndim, check_same_dtype


def check_ids(idx, vocab_size, name="idx"):
    """Raise ValueError naming the first id outside [0, vocab_size) (row-major order)."""
    bad = (idx < 0) | (idx >= vocab_size)
    if bad.any():
        pos = np.unravel_index(int(np.argmax(bad.ravel())), idx.shape)
        raise ValueError(
            f"{name}: token id {int(idx[pos])} at position {tuple(int(p) for p in pos)} "
            f"is outside [0, {vocab_size})")


def forward(idx, wte, wpe):
    """idx int [B, T], wte [V, C], wpe [Tmax, C] -> out [B, T, C], cache."""
    check_int("idx", idx)
    check_ndim("idx", idx, 2)
    check_float("wte", wte)
    check_float("wpe", wpe)
    check_ndim("wte", wte, 2)
    check_ndim("wpe", wpe, 2)
    check_same_dtype(("wte", "wpe"), wte, wpe)
    if wte.shape[1] != wpe.shape[1]:
        raise ValueError(f"wpe: expected {wte.shape[1]} columns to match wte, got shape {wpe.shape}")
    B, T = idx.shape
    if T > wpe.shape[0]:
        raise ValueError(f"idx: sequence length {T} exceeds the {wpe.shape[0]} positions of wpe")
    check_ids(idx, wte.shape[0])
    out = wte[idx] + wpe[:T]                                   # (1) gather + broadcast add
    return out, (idx, wte.shape, wpe.shape)


def backward(dout, cache):
    """dout [B, T, C] -> (dwte [V, C], dwpe [Tmax, C])."""
    idx, wte_shape, wpe_shape = cache
    B, T, C = dout.shape
    dwte = np.zeros(wte_shape, dtype=dout.dtype)
    # Scatter-add: repeated ids accumulate. Sorting the ids and summing each run with
    # np.add.reduceat is ~10x faster than np.add.at and sums every bucket in a fixed order.
    flat_ids = idx.reshape(-1)
    flat_d = dout.reshape(-1, C)
    order = np.argsort(flat_ids, kind="stable")
    sorted_ids = flat_ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    dwte = ...  # (2) TODO (docs/gradients/embedding.md)
    dwpe = ...  # (3) TODO (docs/gradients/embedding.md)
    return dwte, dwpe
