import numpy as np
import pytest
from hypothesis import given, strategies as st

from scratchgpt.reference import embedding
from gradutil import assert_gradients_match


@given(B=st.integers(1, 3), T=st.integers(1, 6), C=st.integers(1, 7), V=st.integers(1, 9),
       seed=st.integers(0, 2**16))
def test_gradients_match_finite_differences(B, T, C, V, seed):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, V, size=(B, T))
    wte, wpe = rng.standard_normal((V, C)), rng.standard_normal((T + 1, C))
    assert_gradients_match(lambda a, b: embedding.forward(idx, a, b), embedding.backward, [wte, wpe], seed)


def test_forward_values_and_repeated_ids_accumulate():
    rng = np.random.default_rng(0)
    wte, wpe = rng.standard_normal((5, 3)), rng.standard_normal((4, 3))
    idx = np.array([[2, 2, 0], [2, 4, 4]])
    out, cache = embedding.forward(idx, wte, wpe)
    np.testing.assert_array_equal(out[1, 2], wte[4] + wpe[2])
    dout = rng.standard_normal(out.shape)
    dwte, dwpe = embedding.backward(dout, cache)
    np.testing.assert_allclose(dwte[2], dout[0, 0] + dout[0, 1] + dout[1, 0])
    np.testing.assert_allclose(dwte[4], dout[1, 1] + dout[1, 2])
    np.testing.assert_array_equal(dwte[[1, 3]], 0.0)
    np.testing.assert_allclose(dwpe[:3], dout.sum(axis=0))
    np.testing.assert_array_equal(dwpe[3], 0.0)
    # the same as the plain scatter-add
    ref = np.zeros_like(wte)
    np.add.at(ref, idx.reshape(-1), dout.reshape(-1, 3))
    np.testing.assert_allclose(dwte, ref)


@pytest.mark.parametrize("bad", [-1, 5, 99])
def test_out_of_range_ids_name_the_first_bad_id(bad):
    wte, wpe = np.zeros((5, 3)), np.zeros((4, 3))
    idx = np.array([[0, 1, 2], [3, bad, bad]])
    with pytest.raises(ValueError, match=rf"idx: token id {bad} at position \(1, 1\)"):
        embedding.forward(idx, wte, wpe)


def test_bad_input_raises():
    wte, wpe = np.zeros((5, 3)), np.zeros((4, 3))
    with pytest.raises(TypeError, match="idx"):
        embedding.forward(np.zeros((1, 2)), wte, wpe)                 # float ids
    with pytest.raises(ValueError, match="sequence length 5"):
        embedding.forward(np.zeros((1, 5), dtype=int), wte, wpe)
    with pytest.raises(ValueError, match="wpe"):
        embedding.forward(np.zeros((1, 2), dtype=int), wte, np.zeros((4, 2)))
    with pytest.raises(TypeError, match="wte, wpe"):
        embedding.forward(np.zeros((1, 2), dtype=int), wte.astype(np.float32), wpe)
