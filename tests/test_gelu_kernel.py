"""csrc/gelu.cu against reference/gelu.py (float64), both forms (tanh and exact erf), on the
host executor always and, marked `cuda`, on the GPU. Outputs are poisoned with NaN first.
bfloat16 / float16 storage: against a float64 GELU of the same T-rounded inputs, element by
element, within the bound derived in gelu_exact."""
import math

import numpy as np
import pytest
from kernelutil import given, st   # hypothesis, or a skip where it is not installed

from kernelutil import U32, assert_within, device_shifted, f64, poisoned, storage

from scratchgpt.reference import gelu as ref

MODES = ["tanh", "none"]


def rel_err(got, want):
    """||got - want|| / ||want||, with a floor of 1e-7 * sqrt(n) under ||want||: in the far
    negative tail GELU is ~1e-10 or less, where the float64 reference's own 1 + tanh(u) has
    lost its relative accuracy (absolute ~1e-16), so only an absolute comparison means anything.
    A kernel that computes 0 there (float32 1 + tanhf(u) = 0) still fails: -5e-8 is above it."""
    got = np.asarray(got, np.float64)
    assert np.isfinite(got).all(), "NaN or inf in the kernel's output (an element not written?)"
    return np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-7 * np.sqrt(want.size))


def make_inputs(shape, seed, scale=3.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    return x, dout


def mode_of(rt, approximate):
    return rt.lib.GELU_TANH if approximate == "tanh" else rt.lib.GELU_EXACT


def check_against_reference(rt, x, dout, approximate, place=None):
    dev = place or rt.asarray
    mode = mode_of(rt, approximate)
    out = rt.asarray(np.full(x.shape, np.nan, np.float32))
    dx = rt.asarray(np.full(x.shape, np.nan, np.float32))
    xd = dev(x)
    rt.lib.gelu_forward(out, xd, mode, rt.stream())
    rt.lib.gelu_backward(dx, dev(dout), xd, mode, rt.stream())
    r_out, cache = ref.forward(x.astype(np.float64), approximate)
    r_dx = ref.backward(dout.astype(np.float64), cache)
    assert rel_err(rt.asnumpy(out), r_out) < 1e-5
    assert rel_err(rt.asnumpy(dx), r_dx) < 1e-5


@given(shape=st.lists(st.integers(1, 37), min_size=1, max_size=3), approximate=st.sampled_from(MODES),
       seed=st.integers(0, 2**16))
def test_matches_reference(kernel_runtime, shape, approximate, seed):
    check_against_reference(kernel_runtime, *make_inputs(tuple(shape), seed), approximate)


@pytest.mark.parametrize("approximate", MODES)
@pytest.mark.parametrize("n", [1, 3, 4, 5, 1023, 4099, 300_001])
def test_sizes_and_tails(kernel_runtime, approximate, n):
    """Lengths around the float4 width (n % 4 tails), and more elements than the capped grid has
    threads (the grid-stride loop runs several times)."""
    check_against_reference(kernel_runtime, *make_inputs((n,), n), approximate)


@pytest.mark.parametrize("approximate", MODES)
def test_large_magnitudes(kernel_runtime, approximate):
    """Saturated tanh / erf tails (|x| up to 40) stay finite and exact enough."""
    x, dout = make_inputs((1000,), 1, scale=15.0)
    check_against_reference(kernel_runtime, x, dout, approximate)


@pytest.mark.parametrize("approximate", MODES)
def test_misaligned_arrays_take_the_scalar_path(kernel_runtime, approximate):
    rt = kernel_runtime

    def shifted(a):
        buffer = rt.xp.zeros(a.size + 1, np.float32)
        buffer[1:] = rt.asarray(a.reshape(-1))
        return buffer[1:].reshape(a.shape)

    check_against_reference(rt, *make_inputs((9, 12), 2), approximate, place=shifted)


def test_in_place(kernel_runtime):
    """out may be x itself; dx may be dout itself."""
    rt = kernel_runtime
    x, dout = make_inputs((7, 33), 4)
    r_out, cache = ref.forward(x.astype(np.float64))
    r_dx = ref.backward(dout.astype(np.float64), cache)
    xd, dd = rt.asarray(x), rt.asarray(dout)
    rt.lib.gelu_backward(dd, dd, xd, rt.lib.GELU_TANH, rt.stream())
    rt.lib.gelu_forward(xd, xd, rt.lib.GELU_TANH, rt.stream())
    assert rel_err(rt.asnumpy(xd), r_out) < 1e-5
    assert rel_err(rt.asnumpy(dd), r_dx) < 1e-5


def test_wrapper_matches_reference_interface(kernel_runtime):
    from scratchgpt.kernels import REGISTRY
    rt = kernel_runtime
    op = REGISTRY["gelu"](rt)
    x, dout = make_inputs((2, 5, 6), 3)
    for approximate in MODES:
        out, cache = op.forward(rt.asarray(x), approximate)
        dx = op.backward(rt.asarray(dout), cache)
        r_out, r_cache = ref.forward(x.astype(np.float64), approximate)
        assert rel_err(rt.asnumpy(out), r_out) < 1e-5
        assert rel_err(rt.asnumpy(dx), ref.backward(dout.astype(np.float64), r_cache)) < 1e-5
    out, _ = op.forward(rt.asarray(x))   # tanh by default
    assert rel_err(rt.asnumpy(out), ref.forward(x.astype(np.float64), "tanh")[0]) < 1e-5


def test_arguments_are_checked_by_name(host_runtime):
    from scratchgpt.kernels import REGISTRY
    op = REGISTRY["gelu"](host_runtime)
    lib = host_runtime.lib
    x, dout = make_inputs((4, 8), 0)
    with pytest.raises(ValueError, match=r"^approximate: expected 'tanh' or 'none', got 'erf'"):
        op.forward(x, "erf")
    with pytest.raises(TypeError, match=r"^x: the host backend stores float32, bfloat16 or float16, got float64"):
        op.forward(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"^approximate: expected"):
        lib.gelu_forward(np.empty_like(x), x, 7)
    with pytest.raises(ValueError, match=r"^out: expected the shape of x \(4, 8\), got \(4, 7\)"):
        lib.gelu_forward(np.empty((4, 7), np.float32), x)
    with pytest.raises(ValueError, match=r"^dout: expected the shape of x"):
        lib.gelu_backward(np.empty_like(x), dout[:, :7].copy(), x)
    with pytest.raises(ValueError, match=r"^x: expected a C-contiguous array"):
        lib.gelu_forward(np.empty((8, 4), np.float32), x.T)
    buffer = np.zeros(40, np.float32)
    with pytest.raises(ValueError, match=r"^out: partly overlaps x"):
        lib.gelu_forward(buffer[1:33], buffer[:32])
    empty = np.zeros((0, 3), np.float32)
    out, _ = op.forward(empty)
    assert out.shape == (0, 3)


# ----------------------------------------------------------------- bfloat16 / float16 storage
KINDS = ["bf16", "fp16"]
SQRT_2_OVER_PI, COEF = np.sqrt(2 / np.pi), 0.044715


def gelu_exact(x, dout, approximate):
    """float64 out = gelu(x), dx = dout gelu'(x) of the (T-rounded) inputs, and e32 for each:
    the error bound of the kernel's float32 arithmetic (csrc/gelu.cu), first order in u = 2^-24.

    tanh form, s = 1 / (1 + E), E = exp(-2u), u = sqrt(2/pi) (x + 0.044715 x^3): float32 u carries
    7 roundings (3 products, the two constants, the sum of same-signed terms, the product), so
    E errs by 2|u| 7u + 4u (expf: 2 ulp) and s, out = x s by eps_s = (14|u| + 6) u; gelu' =
    s + T2, T2 = 2 x s (1 - s) du (du: 6 roundings): 1 - s loses s eps_s + u absolutely, so
    e(gelu') <= s eps_s + |T2| (eps_s + 12 u) + |2 x s du| (s eps_s + 2u) + u (s + |T2|).
    exact form: erfc(z), z = -x/sqrt 2 (2 roundings), has the relative condition number
    |z erfc'(z) / erfc(z)| <= 2 z^2 + 1 = x^2 + 1, erfcf itself 4 ulp: eps = (2 x^2 + 16) u covers
    out and both terms of gelu' = Phi(x) + x phi(x) (phi's exp argument errs by x^2 u / 2).
    The sums may cancel (gelu' = 0 near x = -0.75): each e bounds by the terms' magnitudes.
    dx = dout gelu' is one more rounding. Where s or Phi(x) is below 2^-100, near float32's
    underflow (exp(-2u) overflows at u < -44.4), the relative bounds stop holding and the kernel
    may return anything from 0 to twice the exact value: e32 = |exact| there (|out| < 2^-95)."""
    x, dout = f64(x), f64(dout)
    if approximate == "tanh":
        u = SQRT_2_OVER_PI * (x + COEF * x ** 3)
        with np.errstate(over="ignore"):
            s = 1.0 / (1.0 + np.exp(-2.0 * u))
        du = SQRT_2_OVER_PI * (1 + 3 * COEF * x * x)
        out = x * s
        t2 = 2 * x * s * (1 - s) * du
        grad = s + t2
        eps_s = (14 * np.abs(u) + 6) * U32
        e_out = eps_s * np.abs(out)
        e_grad = (s * eps_s + np.abs(t2) * (eps_s + 12 * U32) + np.abs(2 * x * s * du) * (s * eps_s + 2 * U32)
                  + U32 * (s + np.abs(t2)))
        tiny = s < 2.0 ** -100
    else:
        phi_cdf = 0.5 * np.vectorize(math.erfc)(-x / np.sqrt(2))
        t2 = x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)
        out = x * phi_cdf
        grad = phi_cdf + t2
        eps = (2 * x * x + 16) * U32
        e_out = eps * np.abs(out)
        e_grad = eps * (phi_cdf + np.abs(t2)) + U32 * np.abs(grad)
        tiny = phi_cdf < 2.0 ** -100
    dx = dout * grad
    e_dx = np.abs(dout) * e_grad + U32 * np.abs(dx)
    e_out = np.where(tiny, np.abs(out), e_out)
    e_dx = np.where(tiny, np.abs(dx), e_dx)
    return out, e_out, dx, e_dx


def check_storage(rt, x, dout, approximate, kind, place=None):
    """x and dout rounded to T, the kernels run on them, their outputs (poisoned first) checked
    against gelu_exact of the same T values: |got - exact| <= u_T |exact| + e32 + floor_T."""
    place = place or rt.asarray
    xs, ds = storage(x, kind), storage(dout, kind)
    mode = mode_of(rt, approximate)
    out, dx = poisoned(rt, x.shape, xs.dtype), poisoned(rt, x.shape, xs.dtype)
    xd = place(xs)
    rt.lib.gelu_forward(rt.bits(out), rt.bits(xd), mode, rt.stream())
    rt.lib.gelu_backward(rt.bits(dx), rt.bits(place(ds)), rt.bits(xd), mode, rt.stream())
    e_out_exact, e_out, e_dx_exact, e_dx = gelu_exact(xs, ds, approximate)
    assert_within(rt.asnumpy(out), e_out_exact, e_out, kind, "out", dtype=xs.dtype)
    assert_within(rt.asnumpy(dx), e_dx_exact, e_dx, kind, "dx", dtype=xs.dtype)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("approximate", MODES)
@pytest.mark.parametrize("n", [1, 7, 8, 9, 17, 1023, 4099, 300_001])
def test_storage_sizes_and_tails(kernel_runtime, kind, approximate, n):
    """Lengths around the 8-value pack of bf16 / fp16 (n % 8 tails), and more than the capped
    grid covers in one pass."""
    check_storage(kernel_runtime, *make_inputs((n,), n + 7), approximate, kind)


@given(shape=st.lists(st.integers(1, 37), min_size=1, max_size=3), approximate=st.sampled_from(MODES),
       kind=st.sampled_from(KINDS), seed=st.integers(0, 2**16))
def test_storage_matches_exact(kernel_runtime, shape, approximate, kind, seed):
    check_storage(kernel_runtime, *make_inputs(tuple(shape), seed), approximate, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("approximate", MODES)
def test_storage_large_magnitudes(kernel_runtime, kind, approximate):
    """|x| up to ~60: saturated tails, and float32's underflow region of the negative tail."""
    x, dout = make_inputs((2000,), 11, scale=15.0)
    check_storage(kernel_runtime, x, dout, approximate, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("approximate", MODES)
def test_storage_misaligned_arrays_take_the_scalar_path(kernel_runtime, kind, approximate):
    rt = kernel_runtime
    check_storage(rt, *make_inputs((9, 16), 2), approximate, kind, place=lambda a: device_shifted(rt, a))


@pytest.mark.parametrize("kind", KINDS)
def test_storage_in_place_and_wrapper(kernel_runtime, kind):
    """out may be x itself, dx may be dout itself; the wrapper returns arrays of x's dtype."""
    from scratchgpt.kernels import REGISTRY
    rt = kernel_runtime
    x, dout = make_inputs((7, 33), 4)
    xs, ds = storage(x, kind), storage(dout, kind)
    r_out, e_out, r_dx, e_dx = gelu_exact(xs, ds, "tanh")
    xd, dd = rt.asarray(xs), rt.asarray(ds)
    rt.lib.gelu_backward(rt.bits(dd), rt.bits(dd), rt.bits(xd), rt.lib.GELU_TANH, rt.stream())
    rt.lib.gelu_forward(rt.bits(xd), rt.bits(xd), rt.lib.GELU_TANH, rt.stream())
    assert_within(rt.asnumpy(xd), r_out, e_out, kind, "out (in place)", dtype=xs.dtype)
    assert_within(rt.asnumpy(dd), r_dx, e_dx, kind, "dx (in place)", dtype=xs.dtype)
    op = REGISTRY["gelu"](rt)
    for approximate in MODES:
        r_out, e_out, r_dx, e_dx = gelu_exact(xs, ds, approximate)
        out, cache = op.forward(rt.asarray(xs), approximate)
        dx = op.backward(rt.asarray(ds), cache)
        assert_within(rt.asnumpy(out), r_out, e_out, kind, "wrapper out", dtype=xs.dtype)
        assert_within(rt.asnumpy(dx), r_dx, e_dx, kind, "wrapper dx", dtype=xs.dtype)


def test_storage_dtypes_are_checked_by_name(host_runtime):
    """Every array of a launch holds the storage type of x; anything else is a TypeError naming
    the argument."""
    from scratchgpt.kernels import REGISTRY
    rt, lib = host_runtime, host_runtime.lib
    op = REGISTRY["gelu"](rt)
    x, dout = make_inputs((4, 8), 0)
    xb, xh = storage(x, "bf16"), storage(x, "fp16")
    with pytest.raises(TypeError, match=r"^out: expected bfloat16 \(uint16 bits\) like x, got float32"):
        lib.gelu_forward(np.empty(x.shape, np.float32), rt.bits(xb))
    with pytest.raises(TypeError, match=r"^out: expected float16 like x, got bfloat16 \(uint16 bits\)"):
        lib.gelu_forward(rt.bits(np.empty_like(xb)), xh)
    with pytest.raises(TypeError, match=r"^dout: expected float16 like x, got float32"):
        lib.gelu_backward(np.empty_like(xh), dout, xh)
    with pytest.raises(TypeError, match=r"^dx: expected float32 like x, got float16"):
        lib.gelu_backward(np.empty_like(xh), dout, x)
    with pytest.raises(TypeError, match=r"^x: expected float32, bfloat16 \(uint16 bits\) or float16, got int32"):
        lib.gelu_forward(np.empty(x.shape, np.int32), x.astype(np.int32))
    _, cache = op.forward(xb)
    with pytest.raises(TypeError, match=r"^dout: expected bfloat16 \(uint16 bits\) like x, got float32"):
        op.backward(dout, cache)
    with pytest.raises(TypeError, match=r"^x: expected float32, bfloat16 or float16 values, got uint16"):
        op.forward(xb.view(np.uint16))
