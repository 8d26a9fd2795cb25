"""csrc/residual.cu against reference/residual.py, on the host executor always and, marked
`cuda`, on the GPU. A float32 sum is exact to compare: the kernel must equal NumPy's a + b.
bfloat16 / float16 storage: out = R(f(a) + f(b)), within the derived bound of the float64 sum
and bit for bit NumPy's float32 sum rounded to T."""
import numpy as np
import pytest
from kernelutil import given, st   # hypothesis, or a skip where it is not installed

from kernelutil import U32, assert_within, device_shifted, f64, poisoned, storage

from scratchgpt.reference import residual as ref


def make_inputs(shape, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape).astype(np.float32),
            rng.standard_normal(shape).astype(np.float32))


def run_forward(rt, a, b, place=None):
    dev = place or rt.asarray
    out = rt.asarray(np.full(a.shape, np.nan, np.float32))
    rt.lib.residual_forward(out, dev(a), dev(b), rt.stream())
    return rt.asnumpy(out)


@given(shape=st.lists(st.integers(1, 37), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_matches_reference(kernel_runtime, shape, seed):
    a, b = make_inputs(tuple(shape), seed)
    np.testing.assert_array_equal(run_forward(kernel_runtime, a, b), ref.forward(a, b)[0])


@pytest.mark.parametrize("n", [1, 3, 4, 5, 4099, 300_001])
def test_sizes_and_tails(kernel_runtime, n):
    a, b = make_inputs((n,), n)
    np.testing.assert_array_equal(run_forward(kernel_runtime, a, b), a + b)


def test_misaligned_arrays_take_the_scalar_path(kernel_runtime):
    rt = kernel_runtime

    def shifted(x):
        buffer = rt.xp.zeros(x.size + 1, np.float32)
        buffer[1:] = rt.asarray(x.reshape(-1))
        return buffer[1:].reshape(x.shape)

    a, b = make_inputs((6, 16), 1)
    np.testing.assert_array_equal(run_forward(rt, a, b, place=shifted), a + b)


def test_wrapper_matches_reference_interface(kernel_runtime):
    """forward(a, b) -> (a + b, None); backward(dout) -> (dout, dout); accumulate(acc, b) in place."""
    from scratchgpt.kernels import REGISTRY
    rt = kernel_runtime
    op = REGISTRY["residual"](rt)
    a, b = make_inputs((2, 3, 10), 2)
    out, cache = op.forward(rt.asarray(a), rt.asarray(b))
    assert cache is None
    np.testing.assert_array_equal(rt.asnumpy(out), a + b)
    dout = rt.asarray(b)
    da, db = op.backward(dout)
    assert da is dout and db is dout
    acc = rt.asarray(a.copy())
    assert op.accumulate(acc, rt.asarray(b)) is acc
    np.testing.assert_array_equal(rt.asnumpy(acc), a + b)


def test_arguments_are_checked_by_name(host_runtime):
    from scratchgpt.kernels import REGISTRY
    op = REGISTRY["residual"](host_runtime)
    lib = host_runtime.lib
    a, b = make_inputs((4, 8), 0)
    with pytest.raises(ValueError, match=r"^b: expected the shape of a \(4, 8\), got \(4, 7\)"):
        op.forward(a, b[:, :7].copy())
    with pytest.raises(TypeError, match=r"^b: the host backend stores float32, bfloat16 or float16, got float64"):
        op.forward(a, b.astype(np.float64))
    with pytest.raises(TypeError, match=r"^a: expected float32, bfloat16 \(uint16 bits\) or float16, got int32"):
        lib.residual_forward(np.empty_like(a), a.astype(np.int32), b)
    with pytest.raises(ValueError, match=r"^b: expected a C-contiguous array"):
        lib.residual_forward(np.empty((8, 4), np.float32), np.empty((8, 4), np.float32), b.T)
    readonly = a.copy()
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match=r"^out: the output array is read-only"):
        op.accumulate(readonly, b)
    buffer = np.zeros(40, np.float32)
    with pytest.raises(ValueError, match=r"^out: partly overlaps b"):
        lib.residual_forward(buffer[:32], a.reshape(-1), buffer[2:34])


# ----------------------------------------------------------------- bfloat16 / float16 storage
KINDS = ["bf16", "fp16"]


def check_storage(rt, a, b, kind, place=None):
    """out = R(f(a) + f(b)) on T-rounded a, b. Bound: the float32 sum of two terms rounds once
    (e32 = u |a + b|), then one rounding to T: |got - exact| <= u_T |exact| + e32 + floor_T.
    The kernel does exactly NumPy's float32 addition and round-to-nearest-even cast, so the
    bits must agree too."""
    place = place or rt.asarray
    As, Bs = storage(a, kind), storage(b, kind)
    out = poisoned(rt, a.shape, As.dtype)
    rt.lib.residual_forward(rt.bits(out), rt.bits(place(As)), rt.bits(place(Bs)), rt.stream())
    got = rt.asnumpy(out)
    exact = f64(As) + f64(Bs)
    assert_within(got, exact, U32 * np.abs(exact), kind, "out", dtype=As.dtype)
    want = (As.astype(np.float32) + Bs.astype(np.float32)).astype(As.dtype)
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 7, 8, 9, 4099, 300_001])
def test_storage_sizes_and_tails(kernel_runtime, kind, n):
    check_storage(kernel_runtime, *make_inputs((n,), n + 1), kind)


@given(shape=st.lists(st.integers(1, 37), min_size=1, max_size=3), kind=st.sampled_from(KINDS),
       seed=st.integers(0, 2**16))
def test_storage_matches_exact(kernel_runtime, shape, kind, seed):
    check_storage(kernel_runtime, *make_inputs(tuple(shape), seed), kind)


@pytest.mark.parametrize("kind", KINDS)
def test_storage_misaligned_and_spread_magnitudes(kernel_runtime, kind):
    """Scalar path; operands of very different sizes (the float32 sum itself rounds)."""
    rt = kernel_runtime
    a, b = make_inputs((6, 19), 3)
    b = b * np.float32(2.0) ** np.random.default_rng(4).integers(-12, 12, b.shape).astype(np.float32)
    check_storage(rt, a, b, kind, place=lambda x: device_shifted(rt, x))
    check_storage(rt, a, b, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_storage_wrapper_and_accumulate(kernel_runtime, kind):
    from scratchgpt.kernels import REGISTRY
    rt = kernel_runtime
    op = REGISTRY["residual"](rt)
    a, b = (storage(x, kind) for x in make_inputs((2, 3, 10), 5))
    want = (a.astype(np.float32) + b.astype(np.float32)).astype(a.dtype)
    out, cache = op.forward(rt.asarray(a), rt.asarray(b))
    assert cache is None and out.dtype == a.dtype
    np.testing.assert_array_equal(rt.asnumpy(out).view(np.uint16), want.view(np.uint16))
    acc = rt.asarray(a.copy())
    assert op.accumulate(acc, rt.asarray(b)) is acc
    np.testing.assert_array_equal(rt.asnumpy(acc).view(np.uint16), want.view(np.uint16))


def test_storage_dtypes_are_checked_by_name(host_runtime):
    from scratchgpt.kernels import REGISTRY
    rt, lib = host_runtime, host_runtime.lib
    op = REGISTRY["residual"](rt)
    a, b = make_inputs((4, 8), 0)
    ab, bh = storage(a, "bf16"), storage(b, "fp16")
    with pytest.raises(TypeError, match=r"^b: expected bfloat16 \(uint16 bits\) like a, got float16"):
        op.forward(ab, bh)
    with pytest.raises(TypeError, match=r"^b: expected float32 like a, got bfloat16 \(uint16 bits\)"):
        lib.residual_forward(np.empty_like(a), a, rt.bits(storage(b, "bf16")))
    with pytest.raises(TypeError, match=r"^out: expected float16 like a, got float32"):
        lib.residual_forward(np.empty_like(a), storage(a, "fp16"), bh)
    with pytest.raises(TypeError, match=r"^b: expected float32 like a, got float16"):
        op.accumulate(a.copy(), bh)
