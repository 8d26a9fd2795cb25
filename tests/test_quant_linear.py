"""reference/quant_linear.py and the quantisers of compress/ (GPTQ, pruning masks): packing round
trips, the quantisers' error bounds, exact zeros, GPTQ's objective against round-to-nearest, and
the GPTQ update checked against an independent, unbatched Optimal Brain Surgeon loop."""
import numpy as np
import pytest

from scratchgpt.compress import prune as pr
from scratchgpt.compress import quantize as qz
from scratchgpt.errors import UsageError
from scratchgpt.reference import quant_linear as ql

GROUPS = [2, 4, 8, 16, 32, 64, 128]


def weights(N, K, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, K)) * rng.uniform(0.2, 2.0, size=(N, 1))).astype(np.float32)


def test_int4_pack_round_trip():
    rng = np.random.default_rng(1)
    for N, K in [(1, 2), (3, 6), (5, 130), (7, 256)]:
        codes = rng.integers(0, 16, size=(N, K)).astype(np.uint8)
        packed = ql.pack_int4(codes)
        assert packed.shape == (N, K // 2)
        assert (packed[:, 0] & 15 == codes[:, 0]).all() and (packed[:, 0] >> 4 == codes[:, 1]).all()
        np.testing.assert_array_equal(ql.unpack_int4(packed), codes)


def test_pack_refuses_odd_width_and_big_codes():
    with pytest.raises(ValueError, match="even width"):
        ql.pack_int4(np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="0..15"):
        ql.pack_int4(np.full((2, 2), 16, np.uint8))


def test_int8_rtn_error_bound_and_exact_zero():
    w = weights(9, 37)
    w[2, 5] = 0.0
    w[4] = 0.0                                    # an all-zero row
    qw = ql.quantize_rtn(w, 8)
    assert qw.qweight.dtype == np.int8 and qw.scale.shape == (9,)
    assert np.abs(qw.qweight).max() <= 127
    wh = ql.dequantize(qw)
    # round to nearest: at most half a step per weight, a step being the row's scale
    assert (np.abs(wh - w) <= 0.5 * qw.scale[:, None] * (1 + 1e-6)).all()
    assert wh[2, 5] == 0.0 and (wh[4] == 0.0).all()
    # the row's largest magnitude is hit exactly (up to one float32 rounding)
    i = np.abs(w).argmax(axis=1)
    np.testing.assert_allclose(np.abs(wh[np.arange(9), i]), np.abs(w[np.arange(9), i]), rtol=1e-6)


@pytest.mark.parametrize("G", GROUPS)
def test_int4_rtn_each_group_size(G):
    K = 256
    w = weights(5, K, seed=G)
    w[1, 3] = 0.0
    qw = ql.quantize_rtn(w, 4, G)
    assert qw.qweight.shape == (5, K // 2) and qw.scale.shape == (5, K // G) == qw.zero.shape
    codes = ql.unpack_int4(qw.qweight)
    assert codes.max() <= 15 and qw.zero.max() <= 15
    wh = ql.dequantize(qw)
    step = np.repeat(qw.scale, G, axis=1)
    assert (np.abs(wh - w) <= 0.5 * step * (1 + 1e-5)).all()
    assert wh[1, 3] == 0.0                       # zero is a code: pruned weights stay pruned
    # dequantisation is one float32 rounding of (integer) * scale
    z = np.repeat(qw.zero.astype(np.int32), G, axis=1)
    np.testing.assert_array_equal(wh, (codes.astype(np.int32) - z).astype(np.float32) * step)


def test_group_size_refusals():
    w = weights(2, 96)
    with pytest.raises(ValueError, match="does not divide"):
        ql.quantize_rtn(w, 4, 64)
    with pytest.raises(ValueError, match="even"):
        ql.quantize_rtn(w, 4, 3)
    with pytest.raises(ValueError, match="bits"):
        ql.quantize_rtn(w, 3)


def test_forward_matches_dense_product():
    rng = np.random.default_rng(3)
    w = weights(11, 64)
    x = rng.standard_normal((2, 3, 64))
    b = rng.standard_normal(11)
    for qw in (ql.quantize_rtn(w, 8), ql.quantize_rtn(w, 4, 16)):
        out, cache = ql.forward(x, qw, b)
        np.testing.assert_allclose(out, x @ ql.dequantize(qw).astype(np.float64).T + b, rtol=1e-12)
        dx = ql.backward(np.ones_like(out), cache)
        np.testing.assert_allclose(dx, np.ones_like(out) @ ql.dequantize(qw).astype(np.float64),
                                   rtol=1e-12)


# ------------------------------------------------------------------------------------ GPTQ
def correlated_inputs(n, K, seed=0):
    """Inputs with strongly correlated, unequally scaled features: where GPTQ's error feedback
    has something to exploit (with white inputs H is a multiple of I and GPTQ is RTN)."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((K, K)) / np.sqrt(K) + np.eye(K)
    return rng.standard_normal((n, K)) @ mix * rng.uniform(0.1, 3.0, size=K)


def obs_reference(w, h, bits, G):
    """GPTQ without its tricks, from the paper's equations: each column quantised in order,
    the remaining weights updated by delta = -(w_j - q_j) / [H_F^-1]_jj [H_F^-1]_{j,:}, with
    H_F^-1 the inverse of H restricted to the columns not yet quantised (recomputed each time)."""
    w = np.array(w, np.float64)
    N, K = w.shape
    h = np.array(h, np.float64)
    h[np.diag_indices(K)] += qz.DAMP * np.mean(np.diag(h))
    if bits == 8:
        scale, zero = ql.int8_scale(w), None
    else:
        scale = np.zeros((N, K // G), np.float32)
        zero = np.zeros((N, K // G), np.uint8)
    q_all = np.zeros_like(w)
    for j in range(K):
        if bits == 4 and j % G == 0:
            s, z = ql.int4_scale_zero(w[:, j:j + G], G)
            scale[:, j // G], zero[:, j // G] = s[:, 0], z[:, 0]
        c = ql.quantize_columns(w[:, j:j + 1], bits, scale, zero, G, [j])
        q = ql.dequantize_columns(c, bits, scale, zero, G, [j])[:, 0]
        q_all[:, j] = q
        hinv = np.linalg.inv(h[j:, j:])
        w[:, j:] -= np.outer((w[:, j] - q) / hinv[0, 0], hinv[0])
    return q_all


@pytest.mark.parametrize("bits,G", [(8, 0), (4, 8)])
def test_gptq_equals_the_unbatched_obs_loop(bits, G):
    K = 24
    x = correlated_inputs(400, K)
    h, _ = qz.hessian(x)
    w = weights(6, K)
    got = ql.dequantize(qz.quantize_gptq(w, h, bits, G, act_order=False, block=5))
    want = obs_reference(w, h, bits, G)
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-5, atol=1e-6)


def test_gptq_act_order_is_the_obs_loop_on_permuted_columns():
    K = 20
    h, _ = qz.hessian(correlated_inputs(300, K, seed=4))
    w = weights(5, K, seed=4)
    perm = np.argsort(-np.diag(h), kind="stable")
    want = np.empty_like(w)
    want[:, perm] = obs_reference(w[:, perm], h[np.ix_(perm, perm)], 8, 0)
    got = ql.dequantize(qz.quantize_gptq(w, h, 8, act_order=True, block=7))
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bits,G", [(8, 0), (4, 16), (4, 32)])
def test_gptq_beats_rtn_on_the_layer_output(bits, G):
    K = 64
    x = correlated_inputs(2000, K, seed=bits + G)
    h, _ = qz.hessian(x)
    w = weights(32, K, seed=5)
    rtn = qz.output_error(w, ql.dequantize(ql.quantize_rtn(w, bits, G)), h)
    for act_order in (False, True):
        gptq = qz.output_error(w, ql.dequantize(qz.quantize_gptq(w, h, bits, G, act_order=act_order)), h)
        assert gptq < 0.8 * rtn, (act_order, gptq, rtn)


def test_gptq_keeps_masked_weights_zero_and_handles_dead_inputs():
    K = 32
    x = correlated_inputs(500, K)
    x[:, 7] = 0.0                                  # an input that never moves
    h, _ = qz.hessian(x)
    w = weights(8, K)
    mask = pr.two_four_mask(w)
    for bits, G in ((8, 0), (4, 8)):
        wh = ql.dequantize(qz.quantize_gptq(w, h, bits, G, mask=mask))
        assert (wh[mask == 0] == 0).all()
        assert (wh[:, 7] == 0).all()
        assert np.isfinite(wh).all()


def test_hessian_running_average():
    x = np.random.default_rng(0).standard_normal((300, 5))
    h, n = None, 0
    for part in np.array_split(x, 4):
        h, n = qz.add_hessian(h, n, part)
    np.testing.assert_allclose(h, 2 * x.T @ x / 300, rtol=1e-12)
    assert n == 300


# ---------------------------------------------------------------------------------- pruning
def test_magnitude_masks_per_layer_and_global():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((8, 16)), 5 * rng.standard_normal((4, 16))
    m = pr.magnitude_mask(a, 0.5)
    assert m.sum() == 64 and np.abs(a[m == 1]).min() >= np.abs(a[m == 0]).max()
    g = pr.global_magnitude_masks({"a": a, "b": b}, 0.7)
    kept = np.concatenate([np.abs(a[g["a"] == 1]), np.abs(b[g["b"] == 1])])
    dropped = np.concatenate([np.abs(a[g["a"] == 0]), np.abs(b[g["b"] == 0])])
    assert kept.min() >= dropped.max() and g["a"].sum() + g["b"].sum() == round(0.3 * 192)
    assert 1 - g["a"].mean() > 1 - g["b"].mean()      # the small-weight layer loses more


def test_two_four_mask():
    w = np.array([[1.0, -4.0, 3.0, 0.5, 0.0, 0.0, -2.0, 1.0]])
    np.testing.assert_array_equal(pr.two_four_mask(w), [[0, 1, 1, 0, 0, 0, 1, 1]])
    m = pr.two_four_mask(weights(16, 64))
    assert (m.reshape(16, 16, 4).sum(axis=2) == 2).all()
    with pytest.raises(UsageError, match="runs of 4"):
        pr.two_four_mask(np.ones((2, 6)))


def test_parse_prune():
    assert pr.parse_prune("2:4") == ("2:4", 0.5)
    assert pr.parse_prune("0.5") == ("magnitude", 0.5)
    for bad in ("1.0", "1", "-0.1", "half"):
        with pytest.raises(UsageError, match="--prune"):
            pr.parse_prune(bad)
