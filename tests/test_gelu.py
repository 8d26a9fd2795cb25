import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from scratchgpt.reference import gelu
from gradutil import assert_gradients_match


@given(n=st.integers(1, 40), approximate=st.sampled_from(["tanh", "none"]), seed=st.integers(0, 2**16))
def test_gradients_match_finite_differences(n, approximate, seed):
    x = np.random.default_rng(seed).standard_normal(n) * 3
    assert_gradients_match(lambda a: gelu.forward(a, approximate), gelu.backward, [x], seed)


def test_forward_values():
    x = np.array([-3.0, -1.0, 0.0, 0.5, 2.0])
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(gelu.forward(x, "none")[0], exact, rtol=1e-14)
    tanh_form = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(gelu.forward(x)[0], tanh_form, rtol=1e-14)
    # the approximation stays within 1e-3 of the exact form
    np.testing.assert_allclose(gelu.forward(x)[0], exact, atol=1e-3)


def test_bad_approximation_raises():
    with pytest.raises(ValueError, match="approximate"):
        gelu.forward(np.zeros(2), "sigmoid")
