"""csrc/adamw.cu against reference/adamw.py (float64), on the host executor always and, marked
`cuda`, on the GPU: the update, the global gradient norm (bit-identical run to run) and clipping.
Mixed precision: the update's optional bf16 / fp16 output, the working copy R(p_new), bit for bit
the float32 result rounded once, within the derived bound of the float64 update.
"""
import numpy as np
import pytest
from kernelutil import given, st   # hypothesis, or a skip where it is not installed

from kernelutil import assert_sum_close, f64, poisoned, rel_err, shifted
from kernelutil import STORAGE_TYPES, assert_within, device_shifted, gamma
from scratchgpt.reference import adamw as ref

SIZES = [1, 3, 4, 5, 31, 1000, 1027, 40000]


def op_for(rt):
    from scratchgpt.kernels import REGISTRY
    return REGISTRY["adamw"](rt)


def make_state(shape, seed):
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(shape).astype(np.float32)
    grad = rng.standard_normal(shape).astype(np.float32)
    m = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    v = (rng.random(shape) * 0.01).astype(np.float32)
    return param, grad, m, v


def check_update(rt, state, step, lr, weight_decay, betas=(0.9, 0.95), eps=1e-8):
    """One update against the float64 reference. Each result is a sum of two or three float32
    terms, which may cancel: the error bound is 1e-5 relative plus a few float32 roundings of the
    terms' magnitudes (kernelutil.assert_sum_close)."""
    param, grad, m, v = (rt.asarray(a.copy()) for a in state)
    op_for(rt).update(param, grad, m, v, step, lr, betas[0], betas[1], eps, weight_decay)
    p0, g0, m0, v0 = (f64(a) for a in state)
    want = [p0.copy(), g0, m0.copy(), v0.copy()]
    ref.update(*want, step, lr, betas[0], betas[1], eps, weight_decay)
    got = [rt.asnumpy(a) for a in (param, grad, m, v)]
    assert np.array_equal(got[1], state[1])                        # grad untouched
    assert_sum_close(got[2], want[2], betas[0] * abs(m0) + (1 - betas[0]) * abs(g0), terms=3)
    assert_sum_close(got[3], want[3], betas[1] * v0 + (1 - betas[1]) * g0 * g0, terms=3)
    step_ref = want[0] - p0 * (1 - lr * weight_decay)
    p_terms = abs(p0) * (1 - lr * weight_decay) + abs(step_ref)
    assert_sum_close(got[0], want[0], p_terms, terms=4)
    # the change itself (p_new - p_old), not only p: lr is large enough that float32 resolves it
    assert_sum_close(f64(got[0]) - p0, want[0] - p0, p_terms, terms=4)


@given(size=st.sampled_from(SIZES), step=st.sampled_from([1, 2, 10, 1000]),
       weight_decay=st.sampled_from([0.0, 0.1]), seed=st.integers(0, 2**16))
def test_update_matches_reference(kernel_runtime, size, step, weight_decay, seed):
    check_update(kernel_runtime, make_state((size,), seed), step, 0.1, weight_decay)


@pytest.mark.parametrize("shape", [(1,), (7, 13), (64, 48)])
def test_update_shapes_and_betas(kernel_runtime, shape):
    check_update(kernel_runtime, make_state(shape, 1), 3, 0.05, 0.1, betas=(0.8, 0.999), eps=1e-6)


def test_misaligned_update_takes_the_scalar_path(host_runtime):
    state = [shifted(a) for a in make_state((37,), 4)]
    check_update(host_runtime, state, 2, 0.1, 0.1)


def grad_list(seed, sizes=(3, 1000, 1027, 0, 40001, 5)):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * (1 + i)).astype(np.float32) for i, n in enumerate(sizes)]


def test_global_norm_matches_reference_and_is_bitwise_deterministic(kernel_runtime):
    rt = kernel_runtime
    op = op_for(rt)
    grads = grad_list(0)
    norms = [op.global_norm([rt.asarray(g) for g in grads]) for _ in range(2)]
    assert norms[0] == norms[1]                                    # the same bits
    want = ref.global_norm([f64(g) for g in grads])
    assert abs(norms[0] - want) < 1e-5 * want
    assert op.global_norm([]) == 0.0


def test_global_norm_through_the_launchers_with_a_poisoned_workspace(kernel_runtime):
    rt, lib = kernel_runtime, kernel_runtime.lib
    grads = [rt.asarray(g) for g in grad_list(1, (5, 2**20 + 3))]
    blocks = [lib.global_norm_blocks(g.size) for g in grads]
    assert blocks[1] > 100                                         # a long reduction: many partials
    partials = poisoned(rt, (sum(blocks),), np.float64)
    lib.global_norm_partials(partials[:blocks[0]], grads[0], rt.stream())
    lib.global_norm_partials(partials[blocks[0]:], grads[1], rt.stream())
    norm = poisoned(rt, (1,), np.float64)
    lib.global_norm_finish(norm, partials, rt.stream())
    want = ref.global_norm([f64(rt.asnumpy(g)) for g in grads])
    assert abs(float(rt.asnumpy(norm)[0]) - want) < 1e-5 * want


@pytest.mark.parametrize("max_norm", [None, 1e9, 10.0])
def test_clip_matches_reference(kernel_runtime, max_norm):
    rt = kernel_runtime
    grads = grad_list(2)
    device = [rt.asarray(g.copy()) for g in grads]
    norm = op_for(rt).clip_by_global_norm(device, max_norm)
    want_grads = [f64(g) for g in grads]
    want = ref.clip_by_global_norm(want_grads, max_norm)
    assert abs(norm - want) < 1e-5 * want
    for got, w, g in zip(device, want_grads, grads):
        got = rt.asnumpy(got)
        if max_norm is None or want <= max_norm:
            assert np.array_equal(got, g)                          # untouched
        elif g.size:
            assert rel_err(got, w) < 1e-5


def test_optimizer_step_on_host_matches_numpy():
    """optim.AdamW on the host backend: clip + update of a parameter dict, as on numpy."""
    import warnings

    from scratchgpt.ops import get_backend
    from scratchgpt.optim import AdamW
    rng = np.random.default_rng(3)
    shapes = {"w": (8, 5), "b": (5,), "e": (3, 4)}
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    grads = {k: rng.standard_normal(s).astype(np.float32) * 3 for k, s in shapes.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = AdamW({k: p.copy() for k, p in params.items()}, get_backend("host"), lr=0.1)
    numpy = AdamW({k: f64(p) for k, p in params.items()}, get_backend("numpy"), lr=0.1)
    for _ in range(2):
        norm = host.step({k: g.copy() for k, g in grads.items()}, max_grad_norm=1.0)
        r_norm = numpy.step({k: f64(g) for k, g in grads.items()}, max_grad_norm=1.0)
        assert abs(norm - r_norm) < 1e-5 * r_norm
    for k in shapes:
        assert rel_err(host.params[k] - params[k], numpy.params[k] - params[k]) < 1e-5, k


def test_arguments_are_checked_by_name(host_runtime):
    rt, lib = host_runtime, host_runtime.lib
    op = op_for(rt)
    param, grad, m, v = make_state((6,), 0)
    with pytest.raises(ValueError, match=r"^step: expected an integer >= 1, got 0"):
        op.update(param, grad, m, v, 0, 0.1)
    with pytest.raises(ValueError, match=r"^grad: expected the shape of param \(6,\), got \(5,\)"):
        op.update(param, grad[:5], m, v, 1, 0.1)
    with pytest.raises(TypeError, match=r"^m: the host backend stores float32, bfloat16 or float16, got float64"):
        op.update(param, grad, f64(m), v, 1, 0.1)
    with pytest.raises(ValueError, match=r"^param: shares memory with m"):
        op.update(param, grad, param, v, 1, 0.1)
    with pytest.raises(ValueError, match=r"^v: shares memory with grad"):
        op.update(param, grad, m, grad, 1, 0.1)
    with pytest.raises(ValueError, match=r"^beta2: expected a number in \[0, 1\)"):
        op.update(param, grad, m, v, 1, 0.1, beta2=1.0)
    readonly = param.copy()
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match=r"^param: the output array is read-only"):
        op.update(readonly, grad, m, v, 1, 0.1)
    with pytest.raises(TypeError, match=r"^grads\[1\]: the host backend stores float32, bfloat16 or float16"):
        op.global_norm([grad, f64(grad)])
    with pytest.raises(ValueError, match=r"^partials: expected 1 elements"):
        lib.global_norm_partials(np.zeros(2, np.float64), grad)
    with pytest.raises(TypeError, match=r"^norm: expected float64, got float32"):
        lib.global_norm_finish(np.zeros(1, np.float32), np.zeros(3, np.float64))


# ------------------------------------------------------------ the bf16 / fp16 working copy (lowp)
KINDS = ["bf16", "fp16"]


def update_e32(state, step, lr, weight_decay, betas, eps):
    """float64 p_new and the bound of the kernel's float32 arithmetic on it (u = 2^-24):
    m = b1 m0 + (1 - b1) g (the constants and 3 roundings: gamma(5) of its terms' magnitudes,
    which may cancel), v likewise but positive (gamma(5) v), D = sqrt(v) / sqrt(bc2) + eps
    (gamma(8) relative), step = (lr / bc1) m / D (3 more), p_new = p (1 - lr wd) - step:
        e <= gamma(3) |p (1 - lr wd)| + gamma(12) |step| + (lr / bc1) gamma(5) m_terms / D."""
    p0, g0, m0, v0 = (f64(a) for a in state)
    b1, b2 = betas
    m = b1 * m0 + (1 - b1) * g0
    v = b2 * v0 + (1 - b2) * g0 * g0
    bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
    D = np.sqrt(v) / np.sqrt(bc2) + eps
    upd = (lr / bc1) * m / D
    decayed = p0 * (1 - lr * weight_decay)
    e32 = (gamma(3) * np.abs(decayed) + gamma(12) * np.abs(upd)
           + (lr / bc1) * gamma(5) * (b1 * np.abs(m0) + (1 - b1) * np.abs(g0)) / D)
    return decayed - upd, e32


def check_lowp(rt, state, kind, step=3, lr=0.1, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8,
               place=None, lowp_place=None):
    """The same update with and without lowp: param, m, v identical bits; lowp exactly param_new
    rounded to T (one rounding of the float32 result), within u_T |p_new| + e32 + floor_T of the
    float64 update."""
    place, lowp_place = place or rt.asarray, lowp_place or rt.asarray
    T = STORAGE_TYPES[kind]
    plain = [rt.asarray(a.copy()) for a in state]
    op_for(rt).update(*plain, step, lr, betas[0], betas[1], eps, weight_decay)
    fused = [place(a.copy()) for a in state]
    lowp = lowp_place(np.full(state[0].shape, np.nan, T))
    op_for(rt).update(*fused, step, lr, betas[0], betas[1], eps, weight_decay, lowp=lowp)
    for name, a, b in zip(("param", "grad", "m", "v"), plain, fused):
        np.testing.assert_array_equal(rt.asnumpy(a), rt.asnumpy(b), err_msg=name)
    got = rt.asnumpy(lowp)
    assert got.dtype == T
    np.testing.assert_array_equal(got.view(np.uint16), rt.asnumpy(fused[0]).astype(T).view(np.uint16))
    exact, e32 = update_e32(state, step, lr, weight_decay, betas, eps)
    assert_within(got, exact, e32, kind, "lowp", dtype=T)
    assert_within(rt.asnumpy(fused[0]), exact, e32, "fp32", "param", dtype=np.float32)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", SIZES)
def test_lowp_copy_is_the_update_rounded_once(kernel_runtime, kind, size):
    check_lowp(kernel_runtime, make_state((size,), size), kind)


@given(size=st.sampled_from(SIZES), step=st.sampled_from([1, 2, 10, 1000]), kind=st.sampled_from(KINDS),
       weight_decay=st.sampled_from([0.0, 0.1]), seed=st.integers(0, 2**16))
def test_lowp_matches_exact(kernel_runtime, size, step, kind, weight_decay, seed):
    check_lowp(kernel_runtime, make_state((size,), seed), kind, step=step, weight_decay=weight_decay)


@pytest.mark.parametrize("kind", KINDS)
def test_lowp_misaligned_takes_the_scalar_path(kernel_runtime, kind):
    """The float32 arrays, or only the copy, off their 16- / 8-byte boundaries; a 2-D parameter;
    large parameters (|p| up to ~1000) moved by small steps, where the copy's rounding dominates."""
    rt = kernel_runtime
    state = make_state((7, 13), 4)
    check_lowp(rt, state, kind, place=lambda a: device_shifted(rt, a))
    check_lowp(rt, state, kind, lowp_place=lambda a: device_shifted(rt, a))
    big = [a * s for a, s in zip(make_state((64, 48), 5), (300.0, 1.0, 1.0, 1.0))]
    check_lowp(rt, big, kind, lr=1e-3)


def test_lowp_is_checked_by_name(host_runtime):
    rt, lib = host_runtime, host_runtime.lib
    op = op_for(rt)
    param, grad, m, v = make_state((6,), 0)
    with pytest.raises(TypeError, match=r"^lowp: expected bfloat16 \(uint16 bits\) or float16 \(the working "
                                        r"copy of param\), got float32"):
        op.update(param, grad, m, v, 1, 0.1, lowp=np.zeros(6, np.float32))
    with pytest.raises(TypeError, match=r"^lowp: expected float32, bfloat16 or float16 values, got int32"):
        op.update(param, grad, m, v, 1, 0.1, lowp=np.zeros(6, np.int32))
    with pytest.raises(ValueError, match=r"^lowp: expected the shape of param \(6,\), got \(5,\)"):
        op.update(param, grad, m, v, 1, 0.1, lowp=np.zeros(5, np.float16))
    with pytest.raises(ValueError, match=r"^lowp: shares memory with param"):
        lib.adamw_update(param, grad, m, v, 1, 0.1, 0.9, 0.95, 1e-8, 0.0, lowp=param.view(np.uint16)[:6])
    readonly = np.zeros(6, np.float16)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match=r"^lowp: the output array is read-only"):
        op.update(param, grad, m, v, 1, 0.1, lowp=readonly)
