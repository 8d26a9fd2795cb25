"""Weight-only quantised linear layer (docs/gradients/quant_linear.md): the quantisers, the
packed formats the kernels read (csrc/quant_linear.cu), and the forward.

    int8   symmetric, per output channel:   s[n] = max_k |W[n, k]| / 127,
           q = clip(round(W / s), -127, 127) (int8),                 W_hat = q * s
    int4   asymmetric, per group of G input channels (G even, dividing K):
           s[n, g] = (max - min) / 15 over the group, z[n, g] = clip(round(-min / s), 0, 15),
           q = clip(round(W / s) + z, 0, 15), two per byte (even k low nibble),
           W_hat = (q - z) * s

Zero is always exactly representable (q = 0, or q = z), so pruned weights stay pruned after
quantisation. Each dequantised weight is one float32 rounding of (an exact integer) * s: the
reference, the kernels and `dequantize` agree bit for bit.

A QuantizedWeight holds one layer's tensors (NumPy arrays, or device arrays on the cuda
backend). `forward(x, qw, bias)` dequantises in float64 (or x's float dtype) and multiplies;
the layer is inference-only (a quantised model is not trained), so there is no backward for
the weight; `backward` returns dx = dout W_hat for completeness of the op's interface.
"""
from dataclasses import dataclass

import numpy as np

from ._checks import check_float

INT8_MAX = 127
INT4_LEVELS = 15


@dataclass
class QuantizedWeight:
    """One layer's quantised weight W [out_features, in_features]."""
    bits: int                   # 8 or 4
    qweight: object             # int8 [N, K] | uint8 [N, K / 2]
    scale: object               # float32 [N] | [N, K / G]
    zero: object = None         # None | uint8 [N, K / G]
    group_size: int = 0         # int4: G; int8: 0 (the whole row)

    @property
    def shape(self):
        n, width = self.qweight.shape
        return (int(n), int(width) * (2 if self.bits == 4 else 1))

    @property
    def nbytes(self):
        return sum(int(a.nbytes) for a in (self.qweight, self.scale, self.zero) if a is not None)

    def tensors(self):
        """name suffix -> array, as a checkpoint stores them."""
        out = {"qweight": self.qweight, "scale": self.scale}
        if self.zero is not None:
            out["zero"] = self.zero
        return out


def check_group_size(group_size, in_features, where="group_size"):
    """int4's group size: even (a byte's two weights share a group) and dividing the width."""
    if group_size < 2 or group_size % 2:
        raise ValueError(f"{where}: expected an even number >= 2 (two int4 weights per byte "
                         f"share a group), got {group_size}")
    if in_features % group_size:
        raise ValueError(f"{where}: {group_size} does not divide the layer's input width "
                         f"{in_features}")


# --------------------------------------------------------------------------------- quantisers
def int8_scale(w):
    """Per-row symmetric scale, float32 [N]; an all-zero row gets scale 1 (its q are all 0)."""
    amax = np.abs(np.asarray(w, np.float64)).max(axis=1)
    return np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)


def int4_scale_zero(w, group_size):
    """Per-group asymmetric (scale float32 [N, K/G], zero uint8 [N, K/G]). The range always
    contains 0, so 0 quantises exactly (q = z)."""
    w = np.asarray(w, np.float64)
    N, K = w.shape
    check_group_size(group_size, K)
    g = w.reshape(N, K // group_size, group_size)
    lo = np.minimum(g.min(axis=2), 0.0)
    hi = np.maximum(g.max(axis=2), 0.0)
    scale = np.where(hi > lo, (hi - lo) / INT4_LEVELS, 1.0).astype(np.float32)
    zero = np.clip(np.round(-lo / scale.astype(np.float64)), 0, INT4_LEVELS).astype(np.uint8)
    return scale, zero


def quantize_columns(w, bits, scale, zero=None, group_size=0, cols=None):
    """Integer codes of w's columns `cols` (all when None) under a fixed scale (and zero):
    int8 codes as int8, int4 codes (0..15, unpacked) as uint8. GPTQ calls this one column at a time."""
    w = np.asarray(w, np.float64)
    cols = np.arange(w.shape[1]) if cols is None else np.asarray(cols)
    if bits == 8:
        s = np.asarray(scale, np.float64)[:, None]
        return np.clip(np.round(w / s), -INT8_MAX, INT8_MAX).astype(np.int8)
    g = cols // group_size
    s = np.asarray(scale, np.float64)[:, g]
    z = np.asarray(zero, np.float64)[:, g]
    return np.clip(np.round(w / s) + z, 0, INT4_LEVELS).astype(np.uint8)


def dequantize_columns(codes, bits, scale, zero=None, group_size=0, cols=None):
    """float32 values of integer codes (the inverse of quantize_columns, one rounding each)."""
    codes = np.asarray(codes)
    cols = np.arange(codes.shape[1]) if cols is None else np.asarray(cols)
    if bits == 8:
        return codes.astype(np.float32) * np.asarray(scale, np.float32)[:, None]
    g = cols // group_size
    diff = codes.astype(np.int32) - np.asarray(zero, np.int32)[:, g]     # exact integers
    return diff.astype(np.float32) * np.asarray(scale, np.float32)[:, g]


def pack_int4(codes):
    """uint8 [N, K] codes in 0..15 -> uint8 [N, K / 2], k even in the low nibble."""
    codes = np.asarray(codes, np.uint8)
    if codes.shape[1] % 2:
        raise ValueError(f"codes: int4 packing needs an even width, got {codes.shape[1]}")
    if codes.size and codes.max() > INT4_LEVELS:
        raise ValueError("codes: int4 codes must lie in 0..15")
    return np.ascontiguousarray(codes[:, 0::2] | (codes[:, 1::2] << 4))


def unpack_int4(packed):
    packed = np.asarray(packed, np.uint8)
    out = np.empty((packed.shape[0], packed.shape[1] * 2), np.uint8)
    out[:, 0::2] = packed & 15
    out[:, 1::2] = packed >> 4
    return out


def from_codes(codes, bits, scale, zero=None, group_size=0):
    """A QuantizedWeight from integer codes (packing int4)."""
    if bits == 8:
        return QuantizedWeight(8, np.ascontiguousarray(codes, np.int8),
                               np.ascontiguousarray(scale, np.float32))
    return QuantizedWeight(4, pack_int4(codes), np.ascontiguousarray(scale, np.float32),
                           np.ascontiguousarray(zero, np.uint8), int(group_size))


def quantize_rtn(w, bits, group_size=0):
    """Round to nearest: the baseline quantiser. w [N, K] float -> QuantizedWeight."""
    w = np.asarray(w)
    check_float("w", w)
    if w.ndim != 2:
        raise ValueError(f"w: expected [out_features, in_features], got shape {w.shape}")
    if bits == 8:
        scale = int8_scale(w)
        return from_codes(quantize_columns(w, 8, scale), 8, scale)
    if bits == 4:
        scale, zero = int4_scale_zero(w, group_size)
        return from_codes(quantize_columns(w, 4, scale, zero, group_size), 4, scale, zero, group_size)
    raise ValueError(f"bits: expected 8 or 4, got {bits}")


def codes_of(qw):
    """The unpacked integer codes of a QuantizedWeight (int8, or uint8 0..15)."""
    return np.asarray(qw.qweight) if qw.bits == 8 else unpack_int4(qw.qweight)


def dequantize(qw):
    """float32 [N, K]: W_hat, bit-identical to the kernels' dequantisation."""
    return dequantize_columns(codes_of(qw), qw.bits, qw.scale, qw.zero, qw.group_size)


# ------------------------------------------------------------------------------------ the op
def forward(x, qw, bias=None):
    """x [..., K] float, qw a QuantizedWeight of [N, K], bias [N] or None -> out [..., N], cache.
    The product in x's dtype (float64 for the ground truth) of x and W_hat."""
    check_float("x", x)
    N, K = qw.shape
    if x.shape[-1] != K:
        raise ValueError(f"x: expected last axis {K} (the weight's in_features), got {x.shape}")
    w = dequantize(qw).astype(x.dtype)
    out = x.reshape(-1, K) @ w.T
    if bias is not None:
        out = out + np.asarray(bias, x.dtype)
    return out.reshape(*x.shape[:-1], N), (x.shape, w)


def backward(dout, cache):
    """dx = dout W_hat (the weight is frozen: no dW)."""
    x_shape, w = cache
    return (dout.reshape(-1, dout.shape[-1]) @ w).reshape(x_shape)
