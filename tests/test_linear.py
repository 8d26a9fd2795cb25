import numpy as np
import pytest
from hypothesis import given, strategies as st

from scratchgpt.reference import linear
from gradutil import assert_gradients_match


@given(B=st.integers(1, 3), T=st.integers(1, 5), IN=st.integers(1, 9), OUT=st.integers(1, 9),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_gradients_match_finite_differences(B, T, IN, OUT, bias, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((B, T, IN)), rng.standard_normal((OUT, IN))
    if bias:
        assert_gradients_match(linear.forward, linear.backward, [x, w, rng.standard_normal(OUT)], seed)
    else:
        assert_gradients_match(lambda a, b: linear.forward(a, b), linear.backward, [x, w], seed)


def test_forward_values_and_no_bias_gradient():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((3, 4)), rng.standard_normal((2, 4)), rng.standard_normal(2)
    out, _ = linear.forward(x, w, b)
    np.testing.assert_allclose(out, np.einsum("ni,oi->no", x, w) + b)
    out, cache = linear.forward(x, w)
    assert linear.backward(np.ones_like(out), cache)[2] is None


def test_bad_input_raises():
    with pytest.raises(ValueError, match="weight"):
        linear.forward(np.zeros((2, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="bias"):
        linear.forward(np.zeros((2, 3)), np.zeros((4, 3)), np.zeros(3))
