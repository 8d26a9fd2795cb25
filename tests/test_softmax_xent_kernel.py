"""csrc/softmax_xent.cu against reference/softmax_xent.py (float64), on the host executor always
and, marked `cuda`, on the GPU. Outputs are poisoned before each launch.
bfloat16 / float16 storage: the float32 loss and statistics and the T gradient against float64
on the same T-rounded logits, element by element, within the bounds derived in storage_exact.
"""
import numpy as np
import pytest
from kernelutil import given, st   # hypothesis, or a skip where it is not installed

from kernelutil import f64, poisoned, rel_err, shifted
from kernelutil import U32, assert_within, device_shifted, gamma, storage
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


# ----------------------------------------------------------------- bfloat16 / float16 storage
KINDS = ["bf16", "fp16"]


def storage_exact(z, targets, stats, dloss):
    """float64 results on the (T-rounded) logits z, and e32, the bound of the kernel's float32
    arithmetic (u = 2^-24; expf, expm1f, log1pf within 2 ulp = 4u relative, as CUDA documents).

    forward: m = max z is exact. rest = sum of e_j = exp(z_j - m) over all j but one maximum (its
    term, exactly 1, is never summed). Each term is reached through a chain of exp calls (at its
    push, then one per rescale when the running max grows: at most a thread's K = V / 256 + 8
    elements, plus 13 warp / block combines) whose arguments add up to z_j - m: their roundings
    err by u |z_j - m| in all, each exp, product and sum adds at most 6u, and the V additions of
    positive terms gamma(V) relative: |d rest| <= u sum_j e_j |z_j - m| + gamma(V + 6 K + 84) rest.
    log-sum = log1pf(rest) then errs by |d rest| / (1 + rest) + 4u |log-sum|, the
    row loss log-sum + (m - z_y) by that + 2u (|log-sum| + |m - z_y|) (float32 outputs).
    The mean over counted rows is summed in float64 and rounded once: + u |loss|.
    backward, from z and the kernel's own (m, log-sum) (the backward's inputs): t = (z - m) -
    log-sum errs by u (|z - m| + |t|) = dt, p = exp(t) (or expm1(t) = p - 1 at the target) by
    p dt + 4u |p - onehot|, the scale dloss / N and the product add 2u:
        e(dz) <= |scale| (p dt + 4u |p - onehot|) + 2u |dz|."""
    z = f64(z)
    V = z.shape[-1]
    z2, y = z.reshape(-1, V), np.asarray(targets).reshape(-1)
    rows = len(z2)
    counted = y != -1
    n = max(int(counted.sum()), 1)
    m = z2.max(-1, keepdims=True)
    e = np.exp(z2 - m)
    e[np.arange(rows), z2.argmax(-1)] = 0.0          # one maximum's term: the exact 1
    rest = e.sum(-1, keepdims=True)
    K = V // 256 + 8
    d_rest = U32 * (e * np.abs(z2 - m)).sum(-1, keepdims=True) + gamma(V + 6 * K + 84) * rest
    ls = np.log1p(rest)
    e_ls = d_rest / (1 + rest) + 4 * U32 * np.abs(ls)
    zy = np.where(counted, z2[np.arange(rows), np.where(counted, y, 0)], m[:, 0])
    row_loss = np.where(counted, ls[:, 0] + (m[:, 0] - zy), 0.0)
    e_row = np.where(counted, e_ls[:, 0] + 2 * U32 * (np.abs(ls[:, 0]) + np.abs(m[:, 0] - zy)), 0.0)
    loss = row_loss.sum() / n
    e_loss = e_row.sum() / n + U32 * abs(loss) + 2.0 ** -50 * np.abs(row_loss).sum() / n

    st = f64(stats).reshape(rows, 2)
    m_k, ls_k = st[:, :1], st[:, 1:]
    t = (z2 - m_k) - ls_k
    p = np.exp(t)
    onehot = np.zeros_like(p)
    onehot[np.arange(rows)[counted], y[counted]] = 1.0
    scale = np.where(counted, float(np.float32(dloss)) / n, 0.0)[:, None]
    dz = scale * np.where(onehot == 1, np.expm1(t), p)   # p - 1 without float64's cancellation
    dt = U32 * (np.abs(z2 - m_k) + np.abs(t))
    e_dz = np.abs(scale) * (p * dt + 4 * U32 * np.abs(dz / np.where(scale == 0, 1, scale))) + 2 * U32 * np.abs(dz)
    return dict(loss=(loss, e_loss), max=(m[:, 0], 0.0), log_sum=(ls[:, 0], e_ls[:, 0]),
                count=int(counted.sum()), dz=(dz.reshape(z.shape), e_dz.reshape(z.shape)))


def check_storage(rt, logits, targets, kind, dloss=0.75, place=None):
    """Logits rounded to T; loss, stats float32 within e32 (+ the float32 floor); dlogits T
    within u_T |exact| + e32 + floor_T."""
    place = place or rt.asarray
    zs = storage(logits, kind)
    lib = rt.lib
    rows = logits.size // logits.shape[-1]
    loss, stats, row_loss = poisoned(rt, (1,)), poisoned(rt, (rows, 2)), poisoned(rt, (rows,))
    count = poisoned(rt, (1,), np.int32)
    z, y = place(zs), rt.asarray(targets)
    lib.softmax_xent_forward(loss, stats, row_loss, count, poisoned(rt, (1,), np.int32), rt.bits(z), y,
                             rt.stream())
    dlogits = poisoned(rt, logits.shape, zs.dtype)
    lib.softmax_xent_backward(rt.bits(dlogits), rt.bits(z), stats, y, count, dloss, rt.stream())
    loss, stats, count, dlogits = (rt.asnumpy(a) for a in (loss, stats, count, dlogits))
    want = storage_exact(zs, targets, stats, dloss)
    assert int(count[0]) == want["count"]
    assert_within(loss, *want["loss"], "fp32", "loss", dtype=np.float32)
    assert_within(stats[:, 0], *want["max"], "fp32", "stats max", dtype=np.float32)
    assert_within(stats[:, 1], *want["log_sum"], "fp32", "stats log-sum", dtype=np.float32)
    assert_within(dlogits, *want["dz"], kind, "dlogits", dtype=zs.dtype)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape, V, scale", [((1,), 1, 3.0), ((3,), 7, 3.0), ((4,), 8, 3.0), ((2, 3), 9, 3.0),
                                             ((5,), 100, 30.0), ((2,), 1023, 3.0), ((3,), 2048, 0.1),
                                             ((300,), 64, 3.0), ((2,), 50257, 3.0), ((2,), 50304, 3.0)])
def test_storage_shapes(kernel_runtime, kind, shape, V, scale):
    """V around the 8-value pack, the vocabularies of GPT-2 (odd, the scalar path) and padded,
    many rows (a long mean), spread and flat logits."""
    check_storage(kernel_runtime, *make_inputs(shape, V, V + len(shape), scale), kind)


@given(lead=st.lists(st.integers(1, 5), min_size=0, max_size=2), V=st.sampled_from(VOCABS + [8, 16, 24]),
       scale=st.sampled_from([0.1, 3.0, 30.0]), ignore=st.sampled_from([0.0, 0.3, 1.0]),
       kind=st.sampled_from(KINDS), seed=st.integers(0, 2**16))
def test_storage_matches_exact(kernel_runtime, lead, V, scale, ignore, kind, seed):
    logits, targets = make_inputs(tuple(lead), V, seed, scale, ignore)
    check_storage(kernel_runtime, logits, targets, kind, dloss=1.5)


@pytest.mark.parametrize("kind", KINDS)
def test_storage_large_logits_and_misaligned(kernel_runtime, kind):
    """Logits up to the formats' ranges (bf16: 1e4; fp16: up to its largest finite values), a
    dominant target (loss near 0: the log1p and expm1 paths), and the scalar path."""
    rt = kernel_runtime
    big = 1e4 if kind == "bf16" else 6e4
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((6, 1000)) * big / 4).clip(-big, big).astype(np.float32)
    logits[0, :] = big
    logits[1, :] = -big
    logits[2, 7] = big
    logits[5] = rng.standard_normal(1000).astype(np.float32)
    logits[5, 500] = 20.0                               # p(target) ~ 1 - 1e-6
    targets = np.array([0, 999, 7, 3, -1, 500])
    check_storage(rt, logits, targets, kind)
    check_storage(rt, logits, targets, kind, place=lambda a: device_shifted(rt, a))


@pytest.mark.parametrize("kind", KINDS)
def test_storage_wrapper(kernel_runtime, kind):
    """The loss is a float32 scalar, dlogits of the logits' dtype."""
    rt = kernel_runtime
    op = rt_op(rt)
    logits, targets = make_inputs((2, 5), 40, 9)
    zs = storage(logits, kind)
    loss, cache = op.forward(rt.asarray(zs), rt.asarray(targets))
    assert isinstance(loss, np.float32)
    dlogits = op.backward(2.5, cache)
    assert dlogits.dtype == zs.dtype
    want = storage_exact(zs, targets, rt.asnumpy(cache[2]), 2.5)
    assert_within(np.array([loss]), *want["loss"], "fp32", "loss")
    assert_within(rt.asnumpy(dlogits), *want["dz"], kind, "dlogits", dtype=zs.dtype)


def test_storage_dtypes_are_checked_by_name(host_runtime):
    rt, lib = host_runtime, host_runtime.lib
    logits, targets = make_inputs((4,), 10, 0)
    zb = rt.bits(storage(logits, "bf16"))
    out = [np.zeros(1, np.float32), np.zeros((4, 2), np.float32), np.zeros(4, np.float32),
           np.zeros(1, np.int32), np.zeros(1, np.int32)]
    with pytest.raises(TypeError, match=r"^logits: expected float32, bfloat16 \(uint16 bits\) or float16, got float64"):
        lib.softmax_xent_forward(*out, f64(logits), targets)
    with pytest.raises(TypeError, match=r"^stats: expected float32, got float16"):
        lib.softmax_xent_forward(out[0], np.zeros((4, 2), np.float16), *out[2:], zb, targets)
    with pytest.raises(TypeError, match=r"^loss: expected float32, got uint16"):
        lib.softmax_xent_forward(np.zeros(1, np.uint16), *out[1:], zb, targets)
    lib.softmax_xent_forward(*out, zb, targets)
    with pytest.raises(TypeError, match=r"^dlogits: expected bfloat16 \(uint16 bits\) like logits, got float32"):
        lib.softmax_xent_backward(np.zeros((4, 10), np.float32), zb, out[1], targets, out[3], 1.0)
    with pytest.raises(TypeError, match=r"^dlogits: expected float16 like logits, got bfloat16 \(uint16 bits\)"):
        lib.softmax_xent_backward(np.zeros((4, 10), np.uint16), storage(logits, "fp16"), out[1], targets,
                                  out[3], 1.0)
