"""GRU layer, as PyTorch's nn.GRU and cuDNN define it (docs/gradients/gru.md), batch first.

Gates in the order r, z, n (PyTorch's weight_ih_l0 / weight_hh_l0 rows). For t = 0 .. T-1,
with h_{-1} = h0:

    xp_t = W_ih x_t + b_ih                      [B, 3H]   one matmul over all t (the linear op)
    hp_t = W_hh h_{t-1} + b_hh                  [B, 3H]   the recurrence: sequential in t
    r_t  = sigmoid(xp_r + hp_r)
    z_t  = sigmoid(xp_z + hp_z)
    n_t  = tanh(xp_n + r_t * hp_n)              (b_hn stays inside the product with r)
    h_t  = (1 - z_t) * n_t + z_t * h_{t-1}

The layer is linear (reference.linear) followed by `recurrence`; the kernels split it the same
way. Step markers (n) follow the derivation.
"""
import numpy as np

from . import linear
from ._checks import check_float, check_ndim, check_same_dtype, check_shape


def _sigmoid(a):
    # exp of a non-positive number only: no overflow warning for large |a|
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _check_recurrence(xp, h0, w_hh, b_hh):
    check_float("xp", xp)
    check_ndim("xp", xp, 3)
    check_float("w_hh", w_hh)
    check_ndim("w_hh", w_hh, 2)
    H = w_hh.shape[1]
    check_shape("w_hh", w_hh, (3 * H, H))
    B, T, G = xp.shape
    if G != 3 * H:
        raise ValueError(f"xp: expected last axis 3H = {3 * H} (w_hh is {w_hh.shape}), got {xp.shape}")
    check_float("b_hh", b_hh)
    check_shape("b_hh", b_hh, (3 * H,))
    if h0 is not None:
        check_float("h0", h0)
        check_shape("h0", h0, (B, H))
    check_same_dtype(("xp", "h0", "w_hh", "b_hh"), xp, h0, w_hh, b_hh)
    return B, T, H


def recurrence_forward(xp, h0, w_hh, b_hh):
    """xp [B, T, 3H] (the input projections), h0 [B, H] or None (zeros), w_hh [3H, H],
    b_hh [3H] -> h [B, T, H], cache."""
    B, T, H = _check_recurrence(xp, h0, w_hh, b_hh)
    h_prev = np.zeros((B, H), xp.dtype) if h0 is None else h0
    h = np.empty((B, T, H), xp.dtype)
    gates = np.empty((B, T, 4, H), xp.dtype)          # r, z, n and hp_n, per step
    for t in range(T):
        hp = h_prev @ w_hh.T + b_hh                                        # (1)
        r = _sigmoid(xp[:, t, :H] + hp[:, :H])                             # (2)
        z = _sigmoid(xp[:, t, H:2 * H] + hp[:, H:2 * H])                   # (3)
        n = np.tanh(xp[:, t, 2 * H:] + r * hp[:, 2 * H:])                  # (4)
        h_prev = h[:, t] = (1.0 - z) * n + z * h_prev                      # (5)
        gates[:, t, 0], gates[:, t, 1], gates[:, t, 2], gates[:, t, 3] = r, z, n, hp[:, 2 * H:]
    return h, (h, gates, h0, w_hh)


def previous_states(h, h0):
    """[h0, h_0, ..., h_{T-2}]: the state each step read, [B, T, H]."""
    first = np.zeros_like(h[:, :1]) if h0 is None else h0[:, None]
    return np.concatenate([first, h[:, :-1]], axis=1)


def recurrence_backward(dh, cache):
    """dh [B, T, H] (the loss's gradient w.r.t. every h_t) -> dxp [B, T, 3H], dh0 [B, H] (None
    when h0 was None), dw_hh [3H, H], db_hh [3H]."""
    h, gates, h0, w_hh = cache
    B, T, H = h.shape
    h_prev = previous_states(h, h0)
    dxp = np.empty((B, T, 3 * H), h.dtype)
    dhp = np.empty((B, T, 3 * H), h.dtype)
    carry = np.zeros((B, H), h.dtype)                 # dL/dh_t through step t+1
    for t in reversed(range(T)):
        r, z, n, hp_n = (gates[:, t, k] for k in range(4))
        d = dh[:, t] + carry                                               # (6)
        dn = d * (1.0 - z)                                                 # (7)
        dz = d * (h_prev[:, t] - n)                                        # (8)
        da_n = dn * (1.0 - n * n)                                          # (9)
        da_r = da_n * hp_n * r * (1.0 - r)                                 # (10)
        da_z = dz * z * (1.0 - z)                                          # (11)
        dxp[:, t, :H], dxp[:, t, H:2 * H], dxp[:, t, 2 * H:] = da_r, da_z, da_n   # (12)
        dhp[:, t, :H], dhp[:, t, H:2 * H], dhp[:, t, 2 * H:] = da_r, da_z, da_n * r  # (13)
        carry = d * z + dhp[:, t] @ w_hh                                   # (14)
    dhp2 = dhp.reshape(-1, 3 * H)
    dw_hh = dhp2.T @ h_prev.reshape(-1, H)                                 # (15)
    db_hh = dhp2.sum(axis=0)                                               # (16)
    return dxp, (None if h0 is None else carry), dw_hh, db_hh


def forward(x, h0, w_ih, w_hh, b_ih, b_hh):
    """x [B, T, C], h0 [B, H] or None, w_ih [3H, C], w_hh [3H, H], b_ih, b_hh [3H]
    -> h [B, T, H] (h[:, -1] is the state to continue from), cache."""
    check_float("x", x)
    check_ndim("x", x, 3)
    check_float("w_ih", w_ih)
    check_ndim("w_ih", w_ih, 2)
    check_float("w_hh", w_hh)
    if w_ih.shape[0] != w_hh.shape[0]:
        raise ValueError(f"w_ih: expected {w_hh.shape[0]} rows (3H, like w_hh), got {w_ih.shape}")
    xp, lin_cache = linear.forward(x, w_ih, b_ih)                          # (0)
    h, rec_cache = recurrence_forward(xp, h0, w_hh, b_hh)
    return h, (lin_cache, rec_cache)


def backward(dh, cache):
    """-> dx, dh0 (None when h0 was None), dw_ih, dw_hh, db_ih, db_hh."""
    lin_cache, rec_cache = cache
    dxp, dh0, dw_hh, db_hh = recurrence_backward(dh, rec_cache)
    dx, dw_ih, db_ih = linear.backward(dxp, lin_cache)                     # (17)
    return dx, dh0, dw_ih, dw_hh, db_ih, db_hh
