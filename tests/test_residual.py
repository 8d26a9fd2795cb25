import numpy as np
import pytest

from scratchgpt.reference import residual
from gradutil import assert_gradients_match


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 3, 5))
    assert_gradients_match(residual.forward, residual.backward, [a, b])
    np.testing.assert_array_equal(residual.forward(a, b)[0], a + b)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="b: expected shape"):
        residual.forward(np.zeros((2, 3)), np.zeros((3, 2)))
