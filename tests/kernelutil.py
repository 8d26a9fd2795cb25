"""Helpers shared by the kernel tests (tests/test_*_kernel.py)."""
import numpy as np


def rel_err(got, want):
    """||got - want|| / ||want||, with NaN or inf in `got` failing outright (an unwritten element)."""
    got = np.asarray(got, np.float64)
    assert np.isfinite(got).all(), "NaN or inf in the kernel's output (an element not written?)"
    return np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)


def poisoned(rt, shape, dtype=np.float32):
    """A device array of `shape` filled with NaN (floats) or a garbage pattern (integers)."""
    fill = np.nan if np.dtype(dtype).kind == "f" or np.dtype(dtype).name == "bfloat16" else -12345
    return rt.asarray(np.full(shape, fill, dtype))


def f64(a):
    return np.asarray(a).astype(np.float64)


def shifted(a):
    """A copy of `a` whose data starts 4 bytes past a 16-byte boundary (the kernels' scalar path)."""
    buffer = np.empty(a.size * a.itemsize // 4 + 4, np.float32)
    start = (-buffer.ctypes.data // 4) % 4 + 1    # 16-byte aligned, then one float further
    out = buffer[start:start + a.size * a.itemsize // 4].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert out.ctypes.data % 16 == 4
    return out


def assert_sum_close(got, want, want_abs, terms, tol=1e-5):
    """A float32 sum of `terms` values per output against the float64 `want`: relative error
    below `tol`, or within the float32 summation bound terms * 2^-24 * sum|values| (`want_abs`,
    the same sums over absolute values) where the values cancel."""
    got = np.asarray(got, np.float64)
    assert np.isfinite(got).all(), "NaN or inf in the kernel's output (an element not written?)"
    err = np.linalg.norm(got - want)
    assert err <= tol * np.linalg.norm(want) + terms * 2.0**-24 * np.linalg.norm(want_abs), \
        (err, np.linalg.norm(want))


# ------------------------------------------------------------------- 16-bit storage (bf16, fp16)
# A kernel stored in T computes in float32 and rounds each output once to T. Its tests compare
# against a float64 computation of the same formula on the same T-rounded inputs, element by
# element, with a bound derived from the roundings the kernel does:
#     |got - exact| <= u_T |exact|  (the one rounding to T)  +  e32 (the float32 arithmetic)  +  floor_T
# where e32 is gamma(n) * sum|terms| for a float32 sum of n terms (any order: Higham, Accuracy and
# Stability, eq. 4.4; a product or quotient adds one rounding, i.e. one to n) and each op's test
# writes out its own e32. float32 outputs (statistics, parameter gradients, the loss) get e32 only.
import ml_dtypes  # noqa: E402

STORAGE_TYPES = {"bf16": np.dtype(ml_dtypes.bfloat16), "fp16": np.dtype(np.float16)}
UNIT_ROUNDOFF = {"bf16": 2.0 ** -8, "fp16": 2.0 ** -11, "fp32": 2.0 ** -24}
U32 = 2.0 ** -24                 # float32's unit roundoff (half an ulp of 1)
# Below the normal range relative bounds stop holding: rounding to T then errs by at most half
# T's smallest subnormal (bf16 2^-133, fp16 2^-24), and each float32 operation in gradual
# underflow by 2^-150; 64 of those cover every kernel here.
FLOOR = {"bf16": 2.0 ** -134 + 64 * 2.0 ** -150, "fp16": 2.0 ** -25 + 64 * 2.0 ** -150,
         "fp32": 64 * 2.0 ** -150}


def gamma(n):
    """gamma_n = n u / (1 - n u), u = 2^-24: the relative bound of n float32 roundings in a row."""
    n = np.asarray(n, np.float64)
    return n * U32 / (1 - n * U32)


def storage(a, kind):
    """`a` rounded to the storage type of `kind` ("bf16" | "fp16"; "fp32": float32), round to
    nearest even: the array the kernel gets (its values in float64 are the test's inputs)."""
    return np.asarray(a).astype(np.float32 if kind == "fp32" else STORAGE_TYPES[kind])


def assert_within(got, exact, e32, kind, what, dtype=None):
    """Element by element: |got - exact| <= u_T |exact| (1 + e32-relative) + e32 + floor_T,
    where T is `kind` for an output stored in T and "fp32" for a float32 output. `got` must be
    of `dtype` (when given) and finite; a NaN never passes (a comparison with NaN is false)."""
    if dtype is not None:
        assert np.dtype(got.dtype) == np.dtype(dtype), f"{what}: dtype {got.dtype}, expected {np.dtype(dtype)}"
    g = np.asarray(got).astype(np.float64)
    exact = np.broadcast_to(np.asarray(exact, np.float64), g.shape)
    e32 = np.broadcast_to(np.asarray(e32, np.float64), g.shape)
    assert np.isfinite(g).all(), f"{what}: NaN or inf in the kernel's output (an element not written?)"
    u = UNIT_ROUNDOFF[kind]
    # rounding the float32 value v to T errs by <= u |v| <= u (|exact| + e32)
    bound = u * (np.abs(exact) + e32) + e32 + FLOOR[kind]
    err = np.abs(g - exact)
    bad = ~(err <= bound)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err / np.maximum(bound, 1e-300), 0)), g.shape)
        raise AssertionError(f"{what} ({kind}): {int(bad.sum())} of {bad.size} elements outside the bound; "
                             f"worst at {i}: got {g[i]!r}, exact {exact[i]!r}, |err| {err[i]:.3g} > "
                             f"bound {bound[i]:.3g}")


def device_shifted(rt, a):
    """`a` on the backend with its data one element past an allocation's start: not 16-byte
    aligned (the kernels' scalar paths), whatever the dtype (float32, bfloat16, float16)."""
    a = np.asarray(a)
    buffer = rt.xp.zeros(a.size + 1, a.dtype)
    out = buffer[1:].reshape(a.shape)
    out[...] = rt.asarray(a)
    address = (out.ctypes.data if isinstance(out, np.ndarray)
               else out.__cuda_array_interface__["data"][0])
    assert address % 16 != 0
    return out


# hypothesis is optional where the kernel tests must run (a GPU machine may lack it): without it
# the property tests (@given) skip, saying why, and every other test still runs.
try:
    from hypothesis import given, strategies as st
except ImportError:
    import pytest

    class _AnyStrategy:
        """Stands in for hypothesis.strategies at import time only; nothing is drawn from it."""

        def __getattr__(self, name):
            return self

        def __call__(self, *args, **kwargs):
            return self

    st = _AnyStrategy()

    def given(*args, **kwargs):
        return pytest.mark.skip(reason="hypothesis is not installed (pip install hypothesis)")
