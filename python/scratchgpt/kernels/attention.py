"""attention on the compiled kernels (csrc/attention.cu): reference.attention's interface.

forward(qkv [B, T, 3C], n_head, window=None) -> y [B, T, C], cache; backward(dy, cache) -> dqkv;
decode(q, k_cache, v_cache, t0, window=None) -> y [B, Tn, C] (generation with a KV cache).

Two versions of forward/backward, both matching the reference:
    "flash"         fused and tiled (FlashAttention-2 style): online softmax over key tiles, the
                    per-row log-sum-exp saved, probabilities recomputed in the backward; memory
                    linear in T, banded layers cost O(T * window). The default.
    "materialized"  S = Q K^T, a fused scale + mask + softmax kernel, Y = P V; the T x T
                    probabilities are kept for the backward (memory B * H * T * T per layer).
The version is chosen per call (`version=`), else by `Attention.version` of the instance, whose
default comes from the environment variable SCRATCHGPT_ATTENTION ("flash" or "materialized").
The cache records the version, so backward always matches its forward.

Storage: qkv (and dy, q, k_cache, v_cache) float32, bfloat16 (ml_dtypes) or float16; y, dqkv and
decode's y come back in that type, the log-sum-exp, the materialised probabilities and the
backward's scratch in float32. With 16-bit storage the flash version runs QK^T, PV and the
backward's products on tensor cores (csrc/attention.cu; docs/gradients/attention.md says where
it rounds); bfloat16 crosses the binding as its uint16 bits (`Runtime.bits`).
"""
import os

import numpy as np

VERSIONS = ("flash", "materialized")


def default_version():
    """SCRATCHGPT_ATTENTION, else "flash"."""
    version = os.environ.get("SCRATCHGPT_ATTENTION") or "flash"
    if version not in VERSIONS:
        raise ValueError(f"SCRATCHGPT_ATTENTION: expected one of {VERSIONS}, got {version!r}")
    return version


def _window_arg(window):
    """The launchers' window: 0 for None (causal), else a positive integer."""
    if window is None:
        return 0
    if isinstance(window, (bool, np.bool_)) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window: expected None or a positive integer, got {window!r}")
    return int(min(window, 2**31 - 1))


def _same_storage(name, a, like_name, like):
    """a must have like's storage type (the launchers check it too, but see bfloat16 only as
    uint16 bits)."""
    if a.dtype != like.dtype:
        raise TypeError(f"{name}: expected {like.dtype} like {like_name}, got {a.dtype}")


def _check_n_head(n_head):
    if isinstance(n_head, (bool, np.bool_)) or not isinstance(n_head, (int, np.integer)) or n_head < 1:
        raise ValueError(f"n_head: expected a positive integer, got {n_head!r}")
    return int(n_head)


class Attention:
    STORES_16BIT = True     # takes and returns bf16 / fp16 arrays (precision.storage_backend)
    def __init__(self, runtime, version=None):
        self.rt = runtime
        self.version = default_version() if version is None else self._check_version(version)

    @staticmethod
    def _check_version(version):
        if version not in VERSIONS:
            raise ValueError(f"version: expected one of {VERSIONS}, got {version!r}")
        return version

    def forward(self, qkv, n_head, window=None, version=None):
        rt = self.rt
        version = self.version if version is None else self._check_version(version)
        n_head, w = _check_n_head(n_head), _window_arg(window)
        (qkv,) = rt.inputs(qkv=qkv)
        if qkv.ndim != 3:
            raise ValueError(f"qkv: expected 3 dimensions [B, T, 3C], got shape {tuple(qkv.shape)}")
        B, T, C3 = qkv.shape
        if C3 % (3 * n_head):
            raise ValueError(f"qkv: last axis {C3} must be 3 * n_head * head_dim (n_head={n_head})")
        C = C3 // 3
        y = rt.empty((B, T, C), dtype=qkv.dtype)
        if version == "flash":
            lse = rt.empty((B, n_head, T))
            rt.lib.attention_forward(rt.bits(y), lse, rt.bits(qkv), n_head, w, rt.stream())
            return y, (version, qkv, y, lse, n_head, w)
        probs = rt.empty((B, n_head, T, T))
        rt.lib.attention_materialized_forward(rt.bits(y), probs, rt.bits(qkv), n_head, w, rt.stream())
        return y, (version, qkv, probs, n_head, w)

    def backward(self, dy, cache):
        rt = self.rt
        version, qkv = cache[0], cache[1]
        (dy,) = rt.inputs(dy=dy)
        _same_storage("dy", dy, "qkv", qkv)
        dqkv = rt.empty(qkv.shape, dtype=qkv.dtype)
        b = rt.bits
        if version == "flash":
            _, _, y, lse, n_head, w = cache
            di = rt.empty(lse.shape)
            rt.lib.attention_backward(b(dqkv), di, b(dy), b(qkv), b(y), lse, n_head, w, rt.stream())
        else:
            _, _, probs, n_head, w = cache
            dprobs = rt.empty(probs.shape)
            rt.lib.attention_materialized_backward(b(dqkv), dprobs, b(dy), b(qkv), probs, n_head, w,
                                                   rt.stream())
        return dqkv

    def decode(self, q, k_cache, v_cache, t0, window=None):
        """q [B, H, Tn, D] at positions t0 .. t0+Tn-1 against k_cache, v_cache [B, H, S, D]."""
        rt = self.rt
        w = _window_arg(window)
        if isinstance(t0, (bool, np.bool_)) or not isinstance(t0, (int, np.integer)) or t0 < 0:
            raise ValueError(f"t0: expected a non-negative integer, got {t0!r}")
        q, k_cache, v_cache = rt.inputs(q=q, k_cache=k_cache, v_cache=v_cache)
        _same_storage("k_cache", k_cache, "q", q)
        _same_storage("v_cache", v_cache, "q", q)
        xp = rt.xp
        # the model hands over views of the projection for a fresh cache
        q, k_cache, v_cache = (xp.ascontiguousarray(a) for a in (q, k_cache, v_cache))
        if q.ndim != 4:
            raise ValueError(f"q: expected 4 dimensions [B, H, Tn, D], got shape {tuple(q.shape)}")
        B, H, Tn, D = q.shape
        y = rt.empty((B, Tn, H * D), dtype=q.dtype)
        b = rt.bits
        rt.lib.attention_decode(b(y), b(q), b(k_cache), b(v_cache), int(t0), w, rt.stream())
        return y
