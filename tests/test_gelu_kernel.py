"""csrc/gelu.cu against reference/gelu.py (float64), both forms (tanh and exact erf), on the
host executor always and, marked `cuda`, on the GPU. Outputs are poisoned with NaN first."""
import numpy as np
import pytest
from kernelutil import given, st   # hypothesis, or a skip where it is not installed

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
