import numpy as np
import pytest
from hypothesis import given, strategies as st

from scratchgpt.reference import layernorm
from gradutil import assert_gradients_match


# C = 2 is degenerate: xhat = +-1 whatever x is, so dx ~ 0 and a relative error means nothing
@given(rows=st.integers(1, 6), C=st.integers(3, 13), seed=st.integers(0, 2**16))
def test_gradients_match_finite_differences(rows, C, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, C)) * 3 + 1
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    assert_gradients_match(layernorm.forward, layernorm.backward, [x, w, b], seed)


def test_forward_normalises_rows():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 10)) * 5 + 2
    out, _ = layernorm.forward(x, np.ones(10), np.zeros(10))
    np.testing.assert_allclose(out.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(out.var(-1), 1 / (1 + 1e-5 / x.var(-1)), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved_and_float32_agrees(dtype):
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((4, 9)), rng.standard_normal(9), rng.standard_normal(9)
    out64, c64 = layernorm.forward(x, w, b)
    out, c = layernorm.forward(x.astype(dtype), w.astype(dtype), b.astype(dtype))
    assert out.dtype == dtype
    np.testing.assert_allclose(out, out64, rtol=1e-4, atol=1e-5)
    dout = rng.standard_normal(out.shape)
    for g, g64 in zip(layernorm.backward(dout.astype(dtype), c), layernorm.backward(dout, c64)):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, g64, rtol=1e-3, atol=1e-4)


def test_bad_input_raises():
    x = np.zeros((2, 4))
    with pytest.raises(ValueError, match="weight"):
        layernorm.forward(x, np.ones(3), np.zeros(4))
    with pytest.raises(TypeError, match="x"):
        layernorm.forward(x.astype(np.int64), np.ones(4), np.zeros(4))
