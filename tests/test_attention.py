import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from scratchgpt.reference import attention
from gradutil import assert_gradients_match


def loop_attention(qkv, n_head, window):
    """An independent, deliberately plain implementation: one query at a time."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    D = C // n_head
    y = np.zeros((B, T, C))
    for b in range(B):
        for h in range(n_head):
            q = qkv[b, :, h * D:(h + 1) * D]
            k = qkv[b, :, C + h * D:C + (h + 1) * D]
            v = qkv[b, :, 2 * C + h * D:2 * C + (h + 1) * D]
            for t in range(T):
                lo = 0 if window is None else max(0, t - window + 1)
                s = k[lo:t + 1] @ q[t] / math.sqrt(D)
                p = np.exp(s - s.max())
                y[b, t, h * D:(h + 1) * D] = (p / p.sum()) @ v[lo:t + 1]
    return y


shapes = dict(B=st.integers(1, 2), T=st.integers(1, 6), n_head=st.integers(1, 3), D=st.integers(1, 3),
              window=st.one_of(st.none(), st.integers(1, 8)), seed=st.integers(0, 2**16))


@given(**shapes)
def test_gradients_match_finite_differences(B, T, n_head, D, window, seed):
    qkv = np.random.default_rng(seed).standard_normal((B, T, 3 * n_head * D))
    assert_gradients_match(lambda a: attention.forward(a, n_head, window), attention.backward, [qkv], seed)


@given(**shapes)
def test_forward_matches_plain_loop(B, T, n_head, D, window, seed):
    qkv = np.random.default_rng(seed).standard_normal((B, T, 3 * n_head * D))
    np.testing.assert_allclose(attention.forward(qkv, n_head, window)[0],
                               loop_attention(qkv, n_head, window), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("window", [None, 1, 3])
def test_outputs_ignore_keys_outside_the_mask(window):
    rng = np.random.default_rng(0)
    T, C = 8, 4
    qkv = rng.standard_normal((1, T, 3 * C))
    y, _ = attention.forward(qkv, 2, window)
    t = 5
    changed = qkv.copy()
    changed[0, t + 1:] += 10.0                                   # the future
    if window is not None:
        changed[0, :t - window + 1, C:] += 10.0                  # keys/values before the band
    np.testing.assert_allclose(attention.forward(changed, 2, window)[0][0, t], y[0, t], rtol=1e-12)
    if window == 1:                                              # a width-1 band copies v_t
        np.testing.assert_allclose(y[0], qkv[0, :, 2 * C:], rtol=1e-12)


def test_window_at_least_T_is_dense_causal():
    qkv = np.random.default_rng(1).standard_normal((2, 5, 12))
    np.testing.assert_allclose(attention.forward(qkv, 2, 5)[0], attention.forward(qkv, 2)[0], rtol=1e-14)


@pytest.mark.parametrize("window", [None, 2])
def test_decode_with_cache_matches_full_forward(window):
    rng = np.random.default_rng(2)
    B, T, H, D = 2, 7, 2, 3
    qkv = rng.standard_normal((B, T, 3 * H * D))
    full, _ = attention.forward(qkv, H, window)
    q, k, v = attention.split_heads(qkv, H)
    for t0 in (0, 3, 6):
        y = attention.decode(q[:, :, t0:], k, v, t0, window)
        np.testing.assert_allclose(y, full[:, t0:], rtol=1e-12, atol=1e-14)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="qkv"):
        attention.forward(np.zeros((1, 2, 10)), 2)
    with pytest.raises(ValueError, match="n_head"):
        attention.forward(np.zeros((1, 2, 12)), 0)
    with pytest.raises(ValueError, match="window"):
        attention.forward(np.zeros((1, 2, 12)), 2, window=0)
