"""csrc/softmax_xent.cu against reference/softmax_xent.py (float64), on the host executor always
and, marked `cuda`, on the GPU. Outputs are poisoned before each launch.
"""
import numpy as np
import pytest
from kernelutil import given, st   # hypothesis, or a skip where it is not installed

from kernelutil import f64, poisoned, rel_err, shifted
from scratchgpt.reference import softmax_xent as ref

# V: tiny, not a multiple of 4, exactly 4 / 32 / 1024 (one float4 per thread), odd sizes
VOCABS = [1, 2, 3, 4, 5, 31, 32, 33, 100, 257, 1023, 1024, 1025, 2050]


def make_inputs(shape, V, seed, scale=3.0, ignore=0.2):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(shape + (V,)) * scale + 1.0).astype(np.float32)
    targets = rng.integers(0, V, shape)
    targets[rng.random(shape) < ignore] = -1
    return logits, targets


def run_kernels(rt, logits, targets, dloss=1.0):
    lib, dev = rt.lib, rt.asarray
    rows = logits.size // logits.shape[-1]
    loss, stats, row_loss = poisoned(rt, (1,)), poisoned(rt, (rows, 2)), poisoned(rt, (rows,))
    count = poisoned(rt, (1,), np.int32)
    z, y = dev(logits), dev(targets)
    lib.softmax_xent_forward(loss, stats, row_loss, count, poisoned(rt, (1,), np.int32), z, y, rt.stream())
    dlogits = poisoned(rt, logits.shape)
    lib.softmax_xent_backward(dlogits, z, stats, y, count, dloss, rt.stream())
    return [rt.asnumpy(a) for a in (loss, stats, count, dlogits)]


def check_against_reference(rt, logits, targets, dloss=0.7):
    loss, stats, count, dlogits = run_kernels(rt, logits, targets, dloss)
    r_loss, cache = ref.forward(f64(logits), targets)
    r_dlogits = ref.backward(dloss, cache)
    rows = len(stats)
    tol = 1e-4 if rows > 256 else 1e-5                   # the mean is a long sum over rows
    # the float64 reference itself rounds lse - z_y at ~2^-52 |lse| (it returns exactly 0 for a
    # loss below that, where the kernel's log1p resolves it)
    reference_rounding = 2.0**-52 * np.abs(cache[1]).max(initial=0.0)
    assert abs(float(loss[0]) - r_loss) <= tol * abs(r_loss) + reference_rounding
    assert rel_err(f64(stats[:, 0]) + stats[:, 1], cache[1]) < 1e-5
    assert int(count[0]) == cache[4]
    if np.linalg.norm(r_dlogits) > 0:   # again up to the reference's own rounding (lse, p - 1)
        err = np.linalg.norm(f64(dlogits) - r_dlogits)
        assert np.isfinite(dlogits).all()
        p_rounding = 2.0**-52 * (1 + np.abs(cache[1]).max()) * abs(dloss) / cache[4]   # exp(z - lse)
        assert err < 1e-5 * np.linalg.norm(r_dlogits) + p_rounding * np.sqrt(dlogits.size)
    else:
        assert np.array_equal(dlogits, np.zeros_like(dlogits))   # every row ignored
    return loss, dlogits


@given(lead=st.lists(st.integers(1, 5), min_size=0, max_size=2), V=st.sampled_from(VOCABS),
       scale=st.sampled_from([0.1, 3.0, 30.0]), ignore=st.sampled_from([0.0, 0.3, 1.0]),
       seed=st.integers(0, 2**16))
def test_matches_reference(kernel_runtime, lead, V, scale, ignore, seed):
    logits, targets = make_inputs(tuple(lead), V, seed, scale, ignore)
    check_against_reference(kernel_runtime, logits, targets)


@pytest.mark.parametrize("shape, V", [((3,), 50304), ((2,), 50257), ((300,), 64), ((1,), 1)])
def test_edge_shapes(kernel_runtime, shape, V):
    """The largest vocabulary (padded: float4; GPT-2's own: scalar), many rows, one logit."""
    check_against_reference(kernel_runtime, *make_inputs(shape, V, V))


def test_stable_for_large_logits(kernel_runtime):
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((6, 1000)) * 1e4).astype(np.float32)
    logits[0, :] = 1e4
    logits[1, :] = -1e4
    logits[2, 7] = 1e4                                    # one dominant logit
    targets = np.array([0, 999, 7, 3, -1, 500])
    check_against_reference(kernel_runtime, logits, targets)


def test_loss_is_bitwise_deterministic(kernel_runtime):
    logits, targets = make_inputs((400,), 97, 5)
    a, da = run_kernels(kernel_runtime, logits, targets)[0::3]
    b, db = run_kernels(kernel_runtime, logits, targets)[0::3]
    assert np.array_equal(a, b) and np.array_equal(da, db)


def test_bad_targets_raise_like_the_reference(kernel_runtime):
    rt = kernel_runtime
    op = rt_op(rt)
    logits, _ = make_inputs((2, 3), 4, 0)
    for bad in ([[0, 4, -1], [5, 0, 0]], [[0, 1, -1], [-2, 0, 9]], [[3, 3, 3], [3, 3, 4]]):
        bad = np.array(bad)
        with pytest.raises(ValueError) as want:
            ref.forward(f64(logits), bad)
        with pytest.raises(ValueError) as got:
            op.forward(rt.asarray(logits), rt.asarray(bad.astype(np.int32)))
        assert str(got.value) == str(want.value)
        assert str(got.value).startswith("targets: value ")


def rt_op(rt):
    from scratchgpt.kernels import REGISTRY
    return REGISTRY["softmax_xent"](rt)


def test_wrapper_matches_reference_interface(kernel_runtime):
    rt = kernel_runtime
    op = rt_op(rt)
    logits, targets = make_inputs((2, 5), 40, 9)
    loss, cache = op.forward(rt.asarray(logits), rt.asarray(targets))
    r_loss, r_cache = ref.forward(f64(logits), targets)
    assert isinstance(loss, np.float32)
    assert abs(float(loss) - r_loss) < 1e-5 * r_loss
    dlogits = op.backward(2.5, cache)
    assert dlogits.shape == logits.shape
    assert rel_err(rt.asnumpy(dlogits), ref.backward(2.5, r_cache)) < 1e-5


def test_misaligned_logits_take_the_scalar_path(host_runtime):
    logits, targets = make_inputs((5,), 64, 2)
    check_against_reference(host_runtime, shifted(logits), targets)


def test_arguments_are_checked_by_name(host_runtime):
    rt, lib = host_runtime, host_runtime.lib
    op = rt_op(rt)
    logits, targets = make_inputs((4,), 10, 0)
    with pytest.raises(TypeError, match=r"^logits: the host backend stores float32, bfloat16 or float16, got float64"):
        op.forward(f64(logits), targets)
    with pytest.raises(TypeError, match=r"^targets: expected an integer dtype, got float64"):
        op.forward(logits, f64(targets))
    with pytest.raises(ValueError, match=r"^targets: expected shape \(4,\) to match logits, got \(3,\)"):
        op.forward(logits, targets[:3])
    with pytest.raises(ValueError, match=r"^logits: the last dimension \(V\) must be > 0"):
        op.forward(np.zeros((4, 0), np.float32), targets)
    with pytest.raises(ValueError, match=r"^logits: expected a C-contiguous array"):
        op.forward(np.zeros((10, 4), np.float32).T, targets)
    out = [np.zeros(1, np.float32), np.zeros((4, 2), np.float32), np.zeros(4, np.float32),
           np.zeros(1, np.int32), np.zeros(1, np.int32)]
    with pytest.raises(ValueError, match=r"^stats: expected 8 elements"):
        lib.softmax_xent_forward(out[0], out[1][:3], *out[2:], logits, targets)
    with pytest.raises(TypeError, match=r"^count: expected int32, got float32"):
        lib.softmax_xent_forward(*out[:3], np.zeros(1, np.float32), out[4], logits, targets)
    with pytest.raises(ValueError, match=r"^dlogits: expected the shape of logits"):
        lib.softmax_xent_backward(np.zeros((4, 9), np.float32), logits, out[1], targets, out[3], 1.0)
    with pytest.raises(ValueError, match=r"^dlogits: shares memory with logits"):
        lib.softmax_xent_backward(logits, logits, out[1], targets, out[3], 1.0)


@pytest.mark.slow
def test_large(kernel_runtime):
    """GPT-2's padded vocabulary over 512 rows (a long mean)."""
    check_against_reference(kernel_runtime, *make_inputs((2, 256), 50304, 0))
