"""reference.gru: finite differences (float64) through the whole sequence, and torch.nn.GRU."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from scratchgpt.reference import gru
from gradutil import assert_gradients_match


def _inputs(rng, B, T, C, H, scale=0.5):
    return [rng.standard_normal((B, T, C)), rng.standard_normal((B, H)),
            scale * rng.standard_normal((3 * H, C)), scale * rng.standard_normal((3 * H, H)),
            0.3 * rng.standard_normal(3 * H), 0.3 * rng.standard_normal(3 * H)]


@settings(max_examples=15)
@given(B=st.integers(1, 3), T=st.integers(1, 6), C=st.integers(1, 5), H=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_gradients_match_finite_differences(B, T, C, H, seed):
    rng = np.random.default_rng(seed)
    assert_gradients_match(gru.forward, gru.backward, _inputs(rng, B, T, C, H), seed)


def test_recurrence_gradients_without_h0():
    rng = np.random.default_rng(3)
    B, T, H = 2, 5, 4
    xp, w_hh, b_hh = rng.standard_normal((B, T, 3 * H)), rng.standard_normal((3 * H, H)), rng.standard_normal(3 * H)
    fwd = lambda a, w, b: gru.recurrence_forward(a, None, w, b)          # noqa: E731
    bwd = lambda d, c: (lambda g: (g[0], g[2], g[3]))(gru.recurrence_backward(d, c))   # noqa: E731
    assert_gradients_match(fwd, bwd, [xp, w_hh, b_hh], 3)
    h, cache = gru.recurrence_forward(xp, None, w_hh, b_hh)
    assert gru.recurrence_backward(np.ones_like(h), cache)[1] is None


def test_one_step_by_hand():
    """T = 1, H = 1: the four equations evaluated directly."""
    x, h0 = np.array([[[0.7]]]), np.array([[-0.4]])
    w_ih, w_hh = np.array([[0.5], [-1.2], [0.9]]), np.array([[0.3], [0.8], [-0.6]])
    b_ih, b_hh = np.array([0.1, 0.2, -0.3]), np.array([-0.2, 0.05, 0.4])
    sig = lambda a: 1 / (1 + np.exp(-a))                                  # noqa: E731
    r = sig(0.5 * 0.7 + 0.1 + 0.3 * -0.4 - 0.2)
    z = sig(-1.2 * 0.7 + 0.2 + 0.8 * -0.4 + 0.05)
    n = np.tanh(0.9 * 0.7 - 0.3 + r * (-0.6 * -0.4 + 0.4))
    h, _ = gru.forward(x, h0, w_ih, w_hh, b_ih, b_hh)
    np.testing.assert_allclose(h[0, 0, 0], (1 - z) * n + z * -0.4, rtol=1e-14)


def test_saturated_gates_stay_finite():
    rng = np.random.default_rng(1)
    inputs = _inputs(rng, 2, 3, 4, 3, scale=200.0)
    h, cache = gru.forward(*inputs)
    grads = gru.backward(rng.standard_normal(h.shape), cache)
    assert np.all(np.isfinite(h)) and all(np.all(np.isfinite(g)) for g in grads)


def test_matches_torch_nn_gru():
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch)")
    rng = np.random.default_rng(0)
    B, T, C, H = 3, 7, 5, 6
    x, h0, w_ih, w_hh, b_ih, b_hh = _inputs(rng, B, T, C, H)
    ref = torch.nn.GRU(C, H, batch_first=True, dtype=torch.float64)
    # the explicit mapping: PyTorch stacks the gates as r, z, n in both weights, as we do
    with torch.no_grad():
        for name, value in (("weight_ih_l0", w_ih), ("weight_hh_l0", w_hh),
                            ("bias_ih_l0", b_ih), ("bias_hh_l0", b_hh)):
            getattr(ref, name).copy_(torch.from_numpy(value))
    tx = torch.from_numpy(x).requires_grad_()
    th0 = torch.from_numpy(h0[None]).requires_grad_()                     # [layers, B, H]
    out, hn = ref(tx, th0)
    dh = rng.standard_normal((B, T, H))
    out.backward(torch.from_numpy(dh))
    h, cache = gru.forward(x, h0, w_ih, w_hh, b_ih, b_hh)
    np.testing.assert_allclose(h, out.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(h[:, -1], hn[0].detach().numpy(), rtol=1e-12, atol=1e-13)
    dx, dh0, dw_ih, dw_hh, db_ih, db_hh = gru.backward(dh, cache)
    for ours, theirs in ((dx, tx.grad), (dh0, th0.grad[0]), (dw_ih, ref.weight_ih_l0.grad),
                         (dw_hh, ref.weight_hh_l0.grad), (db_ih, ref.bias_ih_l0.grad),
                         (db_hh, ref.bias_hh_l0.grad)):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-11, atol=1e-12)


def test_bad_input_raises():
    rng = np.random.default_rng(0)
    x, h0, w_ih, w_hh, b_ih, b_hh = _inputs(rng, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="w_hh"):
        gru.forward(x, h0, w_ih, w_hh[:, :4], b_ih, b_hh)
    with pytest.raises(ValueError, match="h0"):
        gru.forward(x, h0[:, :3], w_ih, w_hh, b_ih, b_hh)
    with pytest.raises(ValueError, match="b_hh"):
        gru.forward(x, h0, w_ih, w_hh, b_ih, b_hh[:5])
    with pytest.raises(ValueError, match="w_ih"):
        gru.forward(x, h0, w_ih[:6], w_hh, b_ih, b_hh)
    with pytest.raises(TypeError, match="dtypes must match"):
        gru.forward(x, h0.astype(np.float32), w_ih, w_hh, b_ih, b_hh)
