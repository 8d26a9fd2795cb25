"""gru on the compiled kernels (csrc/gru.cu, with csrc/linear.cu): reference.gru's interface.

forward(x [B, T, C], h0 [B, H] or None, w_ih [3H, C], w_hh [3H, H], b_ih, b_hh [3H])
    -> h [B, T, H], cache;  backward(dh, cache) -> dx, dh0 (None without h0), dw_ih, dw_hh,
    db_ih, db_hh.

The layer is three launches forward and four backward, as the reference splits it:
    xp = linear(x, w_ih, b_ih)                      one matmul over all B*T positions
    h, gates = gru_forward(xp, h0, w_hh, b_hh)      the recurrence (U kept in shared memory)
  backward:
    dxp, dhp, dh0 = gru_backward(dh, ...)           backpropagation through time
    dw_hh, db_hh  = linear's weight gradient of dhp against [h0, h_0 .. h_{T-2}]
    dx, dw_ih, db_ih = linear.backward(dxp)
(the dw_hh matmul also computes an input gradient, dhp W_hh, that is discarded: linear.cu has no
weight-gradient-only entry point; it costs one more [B*T, 3H] x [3H, H] product.)

Storage: float32, or bfloat16 (ml_dtypes) / float16 picked by x's dtype; every array of the
layer is of that type, the parameter gradients are float32 (linear.cu's).
"""
from .embedding import storage_inputs
from .linear import Linear


class GRU:
    STORES_16BIT = True     # takes and returns bf16 / fp16 arrays
    def __init__(self, runtime):
        self.rt = runtime
        self.linear = Linear(runtime)

    def recurrence_forward(self, xp, h0, w_hh, b_hh):
        """xp [B, T, 3H], h0 [B, H] or None -> h [B, T, H], cache (reference.gru's)."""
        rt = self.rt
        xp, w_hh, b_hh = storage_inputs(rt, xp=xp, w_hh=w_hh, b_hh=b_hh)
        if xp.ndim != 3 or w_hh.ndim != 2:
            raise ValueError(f"xp, w_hh: expected [B, T, 3H] and [3H, H], got shapes {xp.shape} "
                             f"and {w_hh.shape}")
        B, T, H = xp.shape[0], xp.shape[1], w_hh.shape[1]
        zero_state = h0 is None
        if zero_state:
            h0 = rt.xp.zeros((B, H), xp.dtype)
        else:
            (h0,) = storage_inputs(rt, h0=h0)
        h = rt.empty((B, T, H), xp.dtype)
        gates = rt.empty((B, T, 4, H), xp.dtype)
        rt.lib.gru_forward(rt.bits(h), rt.bits(gates), rt.bits(xp), rt.bits(h0), rt.bits(w_hh),
                           rt.bits(b_hh), rt.stream())
        return h, (h, gates, h0, w_hh, zero_state)

    def recurrence_backward(self, dh, cache):
        """-> dxp [B, T, 3H], dh0 [B, H] (None for a zero initial state), dw_hh, db_hh (fp32)."""
        rt = self.rt
        h, gates, h0, w_hh, zero_state = cache
        (dh,) = storage_inputs(rt, dh=dh)
        B, T, H = h.shape
        dxp = rt.empty((B, T, 3 * H), h.dtype)
        dhp = rt.empty((B, T, 3 * H), h.dtype)
        dh0 = rt.empty((B, H), h.dtype)
        rt.lib.gru_backward(rt.bits(dxp), rt.bits(dhp), rt.bits(dh0), rt.bits(dh), rt.bits(h),
                            rt.bits(gates), rt.bits(h0), rt.bits(w_hh), rt.stream())
        h_prev = rt.xp.concatenate([h0[:, None], h[:, :-1]], axis=1)
        _, dw_hh, db_hh = self.linear.backward(dhp, (h_prev, w_hh, True))
        return dxp, (None if zero_state else dh0), dw_hh, db_hh

    def forward(self, x, h0, w_ih, w_hh, b_ih, b_hh):
        rt = self.rt
        (w_ih,) = storage_inputs(rt, w_ih=w_ih)
        if w_ih.ndim != 2 or getattr(w_hh, "ndim", 0) != 2 or w_ih.shape[0] != w_hh.shape[0]:
            raise ValueError(f"w_ih: expected [3H, C] with the 3H rows of w_hh {getattr(w_hh, 'shape', None)}, "
                             f"got {w_ih.shape}")
        xp, lin_cache = self.linear.forward(x, w_ih, b_ih)
        h, rec_cache = self.recurrence_forward(xp, h0, w_hh, b_hh)
        return h, (lin_cache, rec_cache)

    def backward(self, dh, cache):
        lin_cache, rec_cache = cache
        dxp, dh0, dw_hh, db_hh = self.recurrence_backward(dh, rec_cache)
        dx, dw_ih, db_ih = self.linear.backward(dxp, lin_cache)
        return dx, dh0, dw_ih, dw_hh, db_ih, db_hh
