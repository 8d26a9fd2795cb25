import numpy as np
import pytest
from hypothesis import given, strategies as st

from scratchgpt.reference import softmax_xent
from gradutil import assert_gradients_match


@given(N=st.integers(1, 6), V=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_gradients_match_finite_differences(N, V, seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((N, V)) * 3
    y = rng.integers(-1, V, size=N)
    y[0] = 0 if V == 1 else y[0] % V                              # at least one counted row
    assert_gradients_match(lambda a: softmax_xent.forward(a, y), softmax_xent.backward, [z], seed)


def test_matches_plain_formula_and_ignores_minus_one():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 3, 7))
    y = np.array([[1, -1, 6], [0, 2, -1]])
    loss, cache = softmax_xent.forward(z, y)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    keep = y != -1
    expected = -np.log(p[keep, y[keep]]).mean()
    np.testing.assert_allclose(loss, expected, rtol=1e-13)
    dz = softmax_xent.backward(1.0, cache)
    onehot = np.zeros_like(p)
    onehot[keep, y[keep]] = 1.0
    np.testing.assert_allclose(dz, np.where(keep[..., None], (p - onehot) / keep.sum(), 0.0), atol=1e-15)
    assert np.all(dz[~keep] == 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_for_huge_logits(dtype):
    z = np.array([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=dtype)
    y = np.array([0, 1, 2])
    loss, cache = softmax_xent.forward(z, y)
    # row 0: log-sum-exp = 1e4, loss 0; row 1: 2e4; row 2: uniform, log 3
    np.testing.assert_allclose(loss, (0.0 + 2e4 + np.log(3.0)) / 3, rtol=1e-6)
    dz = softmax_xent.backward(1.0, cache)
    assert np.all(np.isfinite(dz))
    np.testing.assert_allclose(dz[1], np.array([1.0, -1.0, 0.0]) / 3, atol=1e-7)


def test_all_ignored_gives_zero_loss_and_gradient():
    loss, cache = softmax_xent.forward(np.ones((2, 4)), np.array([-1, -1]))
    assert loss == 0.0
    assert np.all(softmax_xent.backward(1.0, cache) == 0.0)


def test_bad_targets_raise():
    z = np.zeros((2, 4))
    with pytest.raises(ValueError, match="targets: value 4 at flat position 1"):
        softmax_xent.forward(z, np.array([0, 4]))
    with pytest.raises(ValueError, match="targets: value -2"):
        softmax_xent.forward(z, np.array([-2, 0]))
    with pytest.raises(ValueError, match="targets: expected shape"):
        softmax_xent.forward(z, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="targets"):
        softmax_xent.forward(z, np.array([0.0, 1.0]))
