"""Helpers shared by the kernel tests (tests/test_*_kernel.py)."""
import numpy as np


def rel_err(got, want):
    """||got - want|| / ||want||, with NaN or inf in `got` failing outright (an unwritten element)."""
    got = np.asarray(got, np.float64)
    assert np.isfinite(got).all(), "NaN or inf in the kernel's output (an element not written?)"
    return np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)


def poisoned(rt, shape, dtype=np.float32):
    """A device array of `shape` filled with NaN (floats) or a garbage pattern (integers)."""
    fill = np.nan if np.dtype(dtype).kind == "f" else -12345
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
