"""csrc/gru.cu (with csrc/linear.cu for the input projections) against reference/gru.py (float64)
on the host executor and, marked `cuda`, on the GPU (or the emulated device); and the whole layer
against torch.nn.GRU when torch is installed. Outputs are poisoned with NaN before each launch.
Shapes stay small: CI reruns these under every executor schedule and under AddressSanitizer."""
import numpy as np
import pytest
from kernelutil import given, st   # hypothesis, or a skip where it is not installed

from kernelutil import f64, poisoned, rel_err, storage

from scratchgpt.kernels.gru import GRU
from scratchgpt.reference import gru as ref


def recurrence_inputs(B, T, H, seed, scale=0.6):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, T, 3 * H)), 0.8 * np.tanh(rng.standard_normal((B, H))),
            scale * rng.standard_normal((3 * H, H)), 0.3 * rng.standard_normal(3 * H),
            rng.standard_normal((B, T, H)))


def run_recurrence(rt, xp, h0, w_hh, b_hh, dh):
    """The two launchers called directly, every output NaN-poisoned first; NumPy results."""
    B, T, G = xp.shape
    H = G // 3
    dt = xp.dtype
    h, gates = poisoned(rt, (B, T, H), dt), poisoned(rt, (B, T, 4, H), dt)
    xp_d, h0_d, w_d = rt.asarray(xp), rt.asarray(h0), rt.asarray(w_hh)
    rt.lib.gru_forward(rt.bits(h), rt.bits(gates), rt.bits(xp_d), rt.bits(h0_d), rt.bits(w_d),
                       rt.bits(rt.asarray(b_hh)), rt.stream())
    dxp, dhp, dh0 = (poisoned(rt, s, dt) for s in ((B, T, G), (B, T, G), (B, H)))
    rt.lib.gru_backward(rt.bits(dxp), rt.bits(dhp), rt.bits(dh0), rt.bits(rt.asarray(dh)), rt.bits(h),
                        rt.bits(gates), rt.bits(h0_d), rt.bits(w_d), rt.stream())
    return [rt.asnumpy(a) for a in (h, gates, dxp, dhp, dh0)]


def check_recurrence(rt, B, T, H, seed, kind="fp32", tol=1e-5):
    xp, h0, w_hh, b_hh, dh = (storage(a, kind) for a in recurrence_inputs(B, T, H, seed))
    h, gates, dxp, dhp, dh0 = run_recurrence(rt, xp, h0, w_hh, b_hh, dh)
    r_h, cache = ref.recurrence_forward(f64(xp), f64(h0), f64(w_hh), f64(b_hh))
    r_dxp, r_dh0, _, _ = ref.recurrence_backward(f64(dh), cache)
    r_gates = cache[1]
    assert rel_err(h, r_h) < tol
    assert rel_err(gates, r_gates) < tol
    assert rel_err(dxp, r_dxp) < tol
    assert rel_err(dh0, r_dh0) < tol
    # dhp: the r and z thirds equal dxp's, the n third is dxp_n * r
    r_dhp = r_dxp.copy()
    r_dhp[..., 2 * H:] *= r_gates[:, :, 0]
    assert rel_err(dhp, r_dhp) < tol


@given(B=st.integers(1, 9), T=st.integers(1, 5), H=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_recurrence_matches_reference(kernel_runtime, B, T, H, seed):
    """Batches that are not multiples of a block's 4 rows, T = 1, H not a multiple of a warp."""
    check_recurrence(kernel_runtime, B, T, H, seed)


def test_weights_too_large_for_shared_memory(kernel_runtime):
    """The path that reads W_hh from global memory: H one past the shared-memory limit."""
    H = kernel_runtime.lib.gru_shared_u_limit(4) + 1
    check_recurrence(kernel_runtime, 5, 2, H, 7, tol=1e-4)


@pytest.mark.parametrize("kind", ["bf16", "fp16"])
def test_16bit_storage(kernel_runtime, kind):
    """bf16 / fp16 storage: every array of the recurrence is T, the state carried from step to
    step is h_t rounded to T, sums and activations are float32. Against float64 on the same
    T-rounded inputs (which rounds nothing in between), on the relative norm, in units of T's unit
    roundoff u_T (2^-8, 2^-11): each output is one rounding off (about 0.6 u_T measured for h and
    the gates), plus what the rounded states and gates read back carry through the steps. That
    part grows with T and is not derived here: at T <= 4 we measured at most 2.3 u_T (dh0), at
    T = 16 about 9 u_T in bf16; the test allows 4 u_T with T <= 4."""
    from kernelutil import UNIT_ROUNDOFF
    tol = 4 * UNIT_ROUNDOFF[kind]
    check_recurrence(kernel_runtime, 6, 4, 24, 3, kind=kind, tol=tol)
    H = kernel_runtime.lib.gru_shared_u_limit(2) + 1       # the global-memory path in 16 bits
    check_recurrence(kernel_runtime, 2, 2, H, 4, kind=kind, tol=tol)


def layer_inputs(B, T, C, H, seed):
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(H)
    return [rng.standard_normal((B, T, C)).astype(np.float32),
            rng.standard_normal((B, H)).astype(np.float32) * 0.5,
            rng.uniform(-s, s, (3 * H, C)).astype(np.float32), rng.uniform(-s, s, (3 * H, H)).astype(np.float32),
            rng.uniform(-s, s, 3 * H).astype(np.float32), rng.uniform(-s, s, 3 * H).astype(np.float32)]


@pytest.mark.parametrize("with_h0", [True, False])
def test_layer_matches_reference(kernel_runtime, with_h0):
    """The whole layer through kernels/gru.py: linear + recurrence forward, and the backward with
    dW_hh and db_hh from linear's weight gradient."""
    rt = kernel_runtime
    x, h0, w_ih, w_hh, b_ih, b_hh = layer_inputs(5, 6, 7, 9, 1)
    h0 = h0 if with_h0 else None
    dh = np.random.default_rng(2).standard_normal((5, 6, 9)).astype(np.float32)
    layer = GRU(rt)
    h, cache = layer.forward(*(None if a is None else rt.asarray(a) for a in (x, h0, w_ih, w_hh, b_ih, b_hh)))
    grads = layer.backward(rt.asarray(dh), cache)
    r_h, r_cache = ref.forward(*(None if a is None else f64(a) for a in (x, h0, w_ih, w_hh, b_ih, b_hh)))
    r_grads = ref.backward(f64(dh), r_cache)
    assert rel_err(rt.asnumpy(h), r_h) < 1e-5
    names = ("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh")
    for name, g, r in zip(names, grads, r_grads):
        if r is None:
            assert g is None, name
            continue
        assert g.dtype == (np.float32), name
        assert rel_err(rt.asnumpy(g), r) < 1e-4, name


def test_layer_matches_torch_nn_gru(host_runtime):
    """torch.nn.GRU (float32, CPU) with its weights mapped explicitly to ours:
    weight_ih_l0 = w_ih, weight_hh_l0 = w_hh, bias_ih_l0 = b_ih, bias_hh_l0 = b_hh (gates r, z, n)."""
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch)")
    rt = host_runtime
    B, T, C, H = 3, 5, 6, 8
    x, h0, w_ih, w_hh, b_ih, b_hh = layer_inputs(B, T, C, H, 5)
    net = torch.nn.GRU(C, H, batch_first=True)
    with torch.no_grad():
        for name, value in (("weight_ih_l0", w_ih), ("weight_hh_l0", w_hh), ("bias_ih_l0", b_ih),
                            ("bias_hh_l0", b_hh)):
            getattr(net, name).copy_(torch.from_numpy(value))
    tx, th0 = torch.from_numpy(x).requires_grad_(), torch.from_numpy(h0[None].copy()).requires_grad_()
    out, _ = net(tx, th0)
    dh = np.random.default_rng(6).standard_normal((B, T, H)).astype(np.float32)
    out.backward(torch.from_numpy(dh))
    layer = GRU(rt)
    h, cache = layer.forward(x, h0, w_ih, w_hh, b_ih, b_hh)
    dx, dh0, dw_ih, dw_hh, db_ih, db_hh = layer.backward(dh, cache)
    assert rel_err(h, out.detach().numpy().astype(np.float64)) < 1e-5
    for ours, theirs in ((dx, tx.grad), (dh0, th0.grad[0]), (dw_ih, net.weight_ih_l0.grad),
                         (dw_hh, net.weight_hh_l0.grad), (db_ih, net.bias_ih_l0.grad),
                         (db_hh, net.bias_hh_l0.grad)):
        assert rel_err(ours, theirs.numpy().astype(np.float64)) < 1e-5


def test_bad_arguments(host_runtime):
    rt = host_runtime
    xp, h0, w_hh, b_hh, dh = (a.astype(np.float32) for a in recurrence_inputs(2, 3, 4, 0))
    h, gates = np.empty((2, 3, 4), np.float32), np.empty((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="h0: expected shape"):
        rt.lib.gru_forward(h, gates, xp, h0[:, :3].copy(), w_hh, b_hh)
    with pytest.raises(ValueError, match="w_hh: expected shape"):
        rt.lib.gru_forward(h, gates, xp, h0, w_hh[:11].copy(), b_hh)
    with pytest.raises(ValueError, match="gates: expected shape"):
        rt.lib.gru_forward(h, gates[:, :2].copy(), xp, h0, w_hh, b_hh)
    with pytest.raises(TypeError, match="b_hh: expected float32"):
        rt.lib.gru_forward(h, gates, xp, h0, w_hh, b_hh.astype(np.float16))
    with pytest.raises(ValueError, match="h: shares memory with xp"):
        rt.lib.gru_forward(xp.reshape(-1)[:24].reshape(2, 3, 4), gates, xp, h0, w_hh, b_hh)
    big = np.zeros((3 * 1025, 1025), np.float32)
    with pytest.raises(ValueError, match="w_hh: hidden size 1025 outside 1 .. 1024"):
        rt.lib.gru_forward(np.empty((1, 1, 1025), np.float32), np.empty((1, 1, 4, 1025), np.float32),
                           np.zeros((1, 1, 3 * 1025), np.float32), np.zeros((1, 1025), np.float32), big,
                           np.zeros(3 * 1025, np.float32))
    dxp, dhp, dh0 = np.empty_like(xp), np.empty_like(xp), np.empty_like(h0)
    with pytest.raises(ValueError, match="dh: expected the shape of h"):
        rt.lib.gru_backward(dxp, dhp, dh0, dh[:, :2].copy(), h, gates, h0, w_hh)
    with pytest.raises(ValueError, match="dxp: shares memory with dhp"):
        rt.lib.gru_backward(dxp, dxp, dh0, dh, h, gates, h0, w_hh)
