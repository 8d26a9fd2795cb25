"""Inverted dropout with masks from the Philox-4x32-10 counter-based generator
(docs/gradients/dropout.md).

Element e (flat index within the tensor, plus `offset`) is kept when the 32-bit word
    philox4x32_10(counter=(e//4 lo, e//4 hi, stream lo, stream hi), key=(seed lo, seed hi))[e % 4]
is >= threshold = floor(p * 2^32). The mask is a pure function of (seed, stream, offset + e):
a CUDA kernel computes the same bits in any order, and the backward reuses the mask.

    out = x * keep / (1 - p)          dx = dout * keep / (1 - p)
"""
import numpy as np

from ._checks import check_float

PHILOX_M0, PHILOX_M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
PHILOX_W0, PHILOX_W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
_LO32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


def philox4x32_10(counter, key):
    """Philox-4x32-10 on arrays. counter: 4 uint32 arrays (broadcastable), key: 2 uint32 scalars.

    Returns 4 uint32 arrays. Known answers from the generator's authors (Salmon et al., SC'11)
    are checked in tests/test_dropout.py.
    """
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint32) for c in counter)
    k0, k1 = np.uint32(key[0]), np.uint32(key[1])
    with np.errstate(over="ignore"):
        for r in range(10):
            if r:
                k0 = np.uint32(k0 + PHILOX_W0)
                k1 = np.uint32(k1 + PHILOX_W1)
            p0 = PHILOX_M0 * c0.astype(np.uint64)
            p1 = PHILOX_M1 * c2.astype(np.uint64)
            hi0, lo0 = (p0 >> _SHIFT32).astype(np.uint32), (p0 & _LO32).astype(np.uint32)
            hi1, lo1 = (p1 >> _SHIFT32).astype(np.uint32), (p1 & _LO32).astype(np.uint32)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def threshold(p):
    """The uint32 keep threshold for drop probability p in [0, 1)."""
    if not (0.0 <= p < 1.0):
        raise ValueError(f"p: expected a drop probability in [0, 1), got {p!r}")
    return int(np.floor(p * 2.0 ** 32))


def random_words(n, seed, stream=0, offset=0):
    """The generator's uint32 words for elements offset .. offset+n-1 of (seed, stream)."""
    seed, stream, offset = int(seed), int(stream), int(offset)
    for name, value in (("seed", seed), ("stream", stream), ("offset", offset)):
        if not 0 <= value < 2 ** 64:
            raise ValueError(f"{name}: expected an integer in [0, 2**64), got {value}")
    first, last = offset // 4, (offset + n - 1) // 4 if n else offset // 4
    block = np.arange(first, last + 1, dtype=np.uint64)
    words = philox4x32_10(
        ((block & _LO32).astype(np.uint32), (block >> _SHIFT32).astype(np.uint32),
         np.uint32(stream & 0xFFFFFFFF), np.uint32(stream >> 32)),
        (seed & 0xFFFFFFFF, seed >> 32))
    flat = np.stack(words, axis=-1).reshape(-1)                # word e%4 of block e//4
    start = offset - 4 * first
    return flat[start:start + n]


def keep_mask(shape, p, seed, stream=0, offset=0):
    """Boolean keep mask of the given shape."""
    n = int(np.prod(shape))
    return (random_words(n, seed, stream, offset) >= np.uint32(threshold(p))).reshape(shape)


def forward(x, p, seed, stream=0, offset=0, training=True):
    """x [...] -> out [...], cache (keep mask or None, scale)."""
    check_float("x", x)
    thr = threshold(p)
    if not training or thr == 0:
        return x, (None, 1.0)
    keep = keep_mask(x.shape, p, seed, stream, offset)          # (1) k
    scale = x.dtype.type(1.0 / (1.0 - p))
    out = x * keep * scale                                     # (2) y = x k / (1 - p)
    return out, (keep, scale)


def backward(dout, cache):
    keep, scale = cache
    if keep is None:
        return dout
    dx = ...  # (3) TODO (docs/gradients/dropout.md)
    return dx
