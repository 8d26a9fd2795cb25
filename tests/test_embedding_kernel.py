"""csrc/embedding.cu against reference/embedding.py (float64), on the host executor always and,
marked `cuda`, on the GPU. Outputs and the workspace are poisoned before each launch.
bfloat16 / float16 storage: out = R(f(wte[id]) + f(wpe[t])) and the float32 dwte / dwpe against
float64 on the same T-rounded inputs, within derived bounds, and bit for bit NumPy's float32
arithmetic in the kernels' fixed order.
"""
import numpy as np
import pytest
from kernelutil import given, st   # hypothesis, or a skip where it is not installed

from kernelutil import assert_sum_close, f64, poisoned, rel_err, shifted
from kernelutil import U32, assert_within, device_shifted, gamma, storage
from scratchgpt.reference import embedding as ref

WIDTHS = [1, 3, 4, 5, 31, 32, 33, 100, 128, 130]


def make_inputs(B, T, Tmax, V, C, seed, distinct=None, id_dtype=np.int64):
    """Random tables and ids; `distinct` limits the ids to a few values (long buckets)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, distinct) if distinct else np.arange(V)
    idx = rng.choice(ids, (B, T)).astype(id_dtype)
    wte = rng.standard_normal((V, C)).astype(np.float32)
    wpe = rng.standard_normal((Tmax, C)).astype(np.float32)
    dout = rng.standard_normal((B, T, C)).astype(np.float32)
    return idx, wte, wpe, dout


def run_kernels(rt, idx, wte, wpe, dout):
    lib, dev = rt.lib, rt.asarray
    B, T = idx.shape
    idx_d = dev(idx)
    out = poisoned(rt, (B, T, wte.shape[1]))
    lib.embedding_forward(out, idx_d, dev(wte), dev(wpe), poisoned(rt, (1,), np.int32), rt.stream())
    dwte, dwpe = poisoned(rt, wte.shape), poisoned(rt, wpe.shape)
    workspace = poisoned(rt, (lib.embedding_backward_workspace(wte.shape[0], idx.size),), np.int32)
    lib.embedding_backward(dwte, dwpe, workspace, dev(dout), idx_d, rt.stream())
    return [rt.asnumpy(a) for a in (out, dwte, dwpe)]


def check_against_reference(rt, idx, wte, wpe, dout):
    out, dwte, dwpe = run_kernels(rt, idx, wte, wpe, dout)
    r_out, cache = ref.forward(idx, f64(wte), f64(wpe))
    r_dwte, r_dwpe = ref.backward(f64(dout), cache)
    abs_dwte, abs_dwpe = ref.backward(np.abs(f64(dout)), cache)
    assert rel_err(out, r_out) < 1e-5
    assert_sum_close(dwpe, r_dwpe, abs_dwpe, terms=idx.shape[0])
    assert_sum_close(dwte, r_dwte, abs_dwte, terms=np.bincount(idx.ravel()).max())
    return out, dwte, dwpe


@given(B=st.integers(1, 4), T=st.integers(1, 12), extra=st.integers(0, 3), V=st.integers(1, 70),
       C=st.sampled_from(WIDTHS), distinct=st.sampled_from([None, 1, 3]),
       id_dtype=st.sampled_from([np.int32, np.int64]), seed=st.integers(0, 2**16))
def test_matches_reference(kernel_runtime, B, T, extra, V, C, distinct, id_dtype, seed):
    check_against_reference(kernel_runtime, *make_inputs(B, T, T + extra, V, C, seed, distinct, id_dtype))


@pytest.mark.parametrize("B, T, Tmax, V, C, distinct", [
    (1, 1, 1, 1, 768, None),          # one row, GPT-2 width
    (2, 3, 4, 50304, 8, None),        # the largest vocabulary: the scan over the ids
    (4, 700, 700, 7, 4, 3),           # 2800 positions in three chunks, long buckets across them
    (3, 1100, 1200, 50, 5, None),     # chunks of the stable scatter, scalar columns
])
def test_edge_shapes(kernel_runtime, B, T, Tmax, V, C, distinct):
    check_against_reference(kernel_runtime, *make_inputs(B, T, Tmax, V, C, B + T + C, distinct))


def test_backward_is_bitwise_deterministic(kernel_runtime):
    """Two runs give the same bits; each token's rows are summed in increasing position order and
    each position's rows in batch order, exactly as a sequential float32 sum (cumsum) does."""
    idx, wte, wpe, dout = make_inputs(4, 600, 600, 9, 36, 7, distinct=4)
    _, dwte1, dwpe1 = run_kernels(kernel_runtime, idx, wte, wpe, dout)
    _, dwte2, dwpe2 = run_kernels(kernel_runtime, idx, wte, wpe, dout)
    assert np.array_equal(dwte1, dwte2) and np.array_equal(dwpe1, dwpe2)
    flat_ids, rows = idx.reshape(-1), dout.reshape(-1, dout.shape[-1])
    for v in range(wte.shape[0]):
        bucket = rows[flat_ids == v]
        want = np.cumsum(bucket, axis=0)[-1] if len(bucket) else np.zeros(wte.shape[1], np.float32)
        assert np.array_equal(dwte1[v], want), v
    assert np.array_equal(dwpe1, np.cumsum(dout, axis=0)[-1])


def test_bad_ids_raise_naming_the_first(kernel_runtime):
    rt = kernel_runtime
    op = rt_op(rt)
    _, wte, wpe, _ = make_inputs(1, 1, 4, 32, 8, 0)
    bad = np.array([[3, 5, 1, 40], [-1, 2, 0, 1]])          # row-major: (0, 3) comes first
    with pytest.raises(ValueError, match=r"^idx: token id 40 at position \(0, 3\) is outside \[0, 32\)$"):
        op.forward(rt.asarray(bad), rt.asarray(wte), rt.asarray(wpe))
    with pytest.raises(ValueError, match=r"^idx: token id -1 at position \(0, 0\) is outside \[0, 32\)$"):
        op.forward(rt.asarray(bad.astype(np.int32)[::-1].copy()), rt.asarray(wte), rt.asarray(wpe))
    many = np.random.default_rng(1).integers(-5, 40, (3, 500))   # the same message as the reference
    with pytest.raises(ValueError) as want:
        ref.check_ids(many, 32)
    with pytest.raises(ValueError) as got:
        op.forward(rt.asarray(many), rt.asarray(wte), rt.asarray(np.zeros((500, 8), np.float32)))
    assert str(got.value) == str(want.value)
    with pytest.raises(ValueError, match=r"^idx: token id 32 at position \(0, 1\)"):
        op.forward(rt.asarray(np.array([[0, 32]])), rt.asarray(wte), rt.asarray(wpe))
    # the backward checks the ids too (a direct call with ids the forward never saw)
    lib = rt.lib
    workspace = poisoned(rt, (lib.embedding_backward_workspace(32, 8),), np.int32)
    with pytest.raises(ValueError, match=r"^idx: token id 40 at position \(0, 3\)"):
        lib.embedding_backward(poisoned(rt, (32, 8)), poisoned(rt, (4, 8)), workspace,
                               rt.asarray(np.zeros((2, 4, 8), np.float32)), rt.asarray(bad), rt.stream())


def rt_op(rt):
    from scratchgpt.kernels import REGISTRY
    return REGISTRY["embedding"](rt)


def test_wrapper_matches_reference_interface(kernel_runtime):
    rt = kernel_runtime
    op = rt_op(rt)
    idx, wte, wpe, dout = make_inputs(2, 5, 8, 11, 12, 3)
    for ids in (idx, idx.astype(np.uint8), idx.astype(np.int16)):
        out, cache = op.forward(rt.asarray(ids), rt.asarray(wte), rt.asarray(wpe))
        r_out, r_cache = ref.forward(idx, f64(wte), f64(wpe))
        assert cache[1:] == r_cache[1:]
        assert rel_err(rt.asnumpy(out), r_out) < 1e-5
        for got, want in zip(op.backward(rt.asarray(dout), cache), ref.backward(f64(dout), r_cache)):
            assert rel_err(rt.asnumpy(got), want) < 1e-5


def test_misaligned_tables_take_the_scalar_path(host_runtime):
    idx, wte, wpe, dout = make_inputs(2, 6, 6, 10, 16, 4)
    check_against_reference(host_runtime, idx, shifted(wte), shifted(wpe), shifted(dout))


def test_arguments_are_checked_by_name(host_runtime):
    rt, lib = host_runtime, host_runtime.lib
    op = rt_op(rt)
    idx, wte, wpe, dout = make_inputs(2, 4, 4, 10, 8, 0)
    status = np.zeros(1, np.int32)
    with pytest.raises(TypeError, match=r"^idx: expected an integer dtype, got float32"):
        op.forward(idx.astype(np.float32), wte, wpe)
    with pytest.raises(TypeError, match=r"^wte: the host backend stores float32, bfloat16 or float16, got float64"):
        op.forward(idx, f64(wte), wpe)
    with pytest.raises(ValueError, match=r"^idx: expected 2 dimensions"):
        op.forward(idx[0], wte, wpe)
    with pytest.raises(ValueError, match=r"^wpe: expected 8 columns to match wte"):
        op.forward(idx, wte, wpe[:, :7].copy())
    with pytest.raises(ValueError, match=r"^idx: sequence length 4 exceeds the 3 positions of wpe"):
        op.forward(idx, wte, wpe[:3])
    with pytest.raises(ValueError, match=r"^wte: expected a C-contiguous array"):
        op.forward(idx, np.asfortranarray(wte), wpe)
    with pytest.raises(ValueError, match=r"^out: expected shape \(2, 4, 8\)"):
        lib.embedding_forward(np.empty((2, 4, 7), np.float32), idx, wte, wpe, status)
    with pytest.raises(TypeError, match=r"^status: expected int32"):
        lib.embedding_forward(np.empty((2, 4, 8), np.float32), idx, wte, wpe, np.zeros(1, np.float32))
    with pytest.raises(TypeError, match=r"^idx: expected int32 or int64 token ids, got uint8"):
        lib.embedding_forward(np.empty((2, 4, 8), np.float32), idx.astype(np.uint8), wte, wpe, status)
    with pytest.raises(ValueError, match=r"^workspace: expected at least 30 int32"):
        lib.embedding_backward(np.empty_like(wte), np.empty_like(wpe), np.zeros(29, np.int32), dout, idx)
    with pytest.raises(ValueError, match=r"^dout: expected shape \(2, 4, 8\)"):
        lib.embedding_backward(np.empty_like(wte), np.empty_like(wpe), np.zeros(30, np.int32),
                               dout[:, :3].copy(), idx)
    with pytest.raises(ValueError, match=r"^out: shares memory with wte"):
        lib.embedding_forward(wte[:8].reshape(2, 4, 8), idx, wte, wpe, status)
    with pytest.raises(ValueError, match=r"^dwpe: shares memory with dout"):
        lib.embedding_backward(np.empty_like(wte), dout.reshape(-1)[:32].reshape(4, 8),
                               np.zeros(30, np.int32), dout, idx)


@pytest.mark.slow
def test_large(kernel_runtime):
    """GPT-2 sizes: B*T = 8192 positions (8 chunks of the scatter), V = 50304, C = 768."""
    check_against_reference(kernel_runtime, *make_inputs(8, 1024, 1024, 50304, 768, 0, distinct=2000))



def test_dwpe_past_the_old_grid_limit(host_runtime):
    """dwpe had its column blocks (256 columns each) on grid.y: C > 65535 * 256 failed. One
    column more (odd C: the scalar path, whose blocks are the narrower), B = 2, one position."""
    rt = host_runtime
    C = 65535 * 256 + 1
    dout = np.random.default_rng(31).standard_normal((2, 1, C)).astype(np.float32)
    idx = np.zeros((2, 1), np.int64)
    dwte, dwpe = np.full((1, C), np.nan, np.float32), np.full((1, C), np.nan, np.float32)
    workspace = np.full(rt.lib.embedding_backward_workspace(1, 2), -7, np.int32)
    rt.lib.embedding_backward(dwte, dwpe, workspace, dout, idx, rt.stream())
    want = dout[0] + dout[1]   # two float32 terms: the kernels add them in this order
    np.testing.assert_array_equal(dwpe, want)
    np.testing.assert_array_equal(dwte, want)


# ----------------------------------------------------------------- bfloat16 / float16 storage
KINDS = ["bf16", "fp16"]


def check_storage(rt, idx, wte, wpe, dout, kind, place=None):
    """Tables and dout rounded to T. Bounds (u = 2^-24, gamma(n) = n u / (1 - n u)):
    out: one float32 sum of two terms, then one rounding to T: u_T |exact| + u |exact| + floor_T;
    dwpe[t]: a float32 sum of the B rows dout[:, t] (float32 output): gamma(B) sum|dout[:, t]|;
    dwte[v]: a float32 sum over the positions holding v: gamma(count(v)) sum|dout rows|.
    The kernels' order is fixed (batch order; increasing position per token), so the bits must
    also equal NumPy's float32 cumulative sums of the widened rows."""
    place = place or rt.asarray
    wt, wp, ds = storage(wte, kind), storage(wpe, kind), storage(dout, kind)
    lib = rt.lib
    B, T = idx.shape
    idx_d = rt.asarray(idx)
    out = poisoned(rt, (B, T, wte.shape[1]), wt.dtype)
    lib.embedding_forward(rt.bits(out), idx_d, rt.bits(place(wt)), rt.bits(place(wp)),
                          poisoned(rt, (1,), np.int32), rt.stream())
    dwte, dwpe = poisoned(rt, wte.shape), poisoned(rt, wpe.shape)
    workspace = poisoned(rt, (lib.embedding_backward_workspace(wte.shape[0], idx.size),), np.int32)
    lib.embedding_backward(dwte, dwpe, workspace, rt.bits(place(ds)), idx_d, rt.stream())
    out, dwte, dwpe = (rt.asnumpy(a) for a in (out, dwte, dwpe))

    exact = f64(wt)[idx] + f64(wp)[:T][None]
    assert_within(out, exact, U32 * np.abs(exact), kind, "out", dtype=wt.dtype)
    want = (wt.astype(np.float32)[idx] + wp.astype(np.float32)[:T][None]).astype(wt.dtype)
    np.testing.assert_array_equal(out.view(np.uint16), want.view(np.uint16))

    d = f64(ds)
    r_dwte, r_dwpe = np.zeros(wte.shape), np.zeros(wpe.shape)
    a_dwte, a_dwpe = np.zeros(wte.shape), np.zeros(wpe.shape)
    r_dwpe[:T], a_dwpe[:T] = d.sum(0), np.abs(d).sum(0)
    np.add.at(r_dwte, idx.ravel(), d.reshape(-1, d.shape[-1]))
    np.add.at(a_dwte, idx.ravel(), np.abs(d).reshape(-1, d.shape[-1]))
    counts = np.bincount(idx.ravel(), minlength=wte.shape[0])[:, None]
    assert_within(dwpe, r_dwpe, gamma(B) * a_dwpe, "fp32", "dwpe", dtype=np.float32)
    assert_within(dwte, r_dwte, gamma(counts) * a_dwte, "fp32", "dwte", dtype=np.float32)
    d32 = ds.astype(np.float32)
    np.testing.assert_array_equal(dwpe[:T], np.cumsum(d32, axis=0)[-1])
    rows, flat = d32.reshape(-1, d32.shape[-1]), idx.ravel()
    for v in np.unique(flat):
        np.testing.assert_array_equal(dwte[v], np.cumsum(rows[flat == v], axis=0)[-1])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B, T, Tmax, V, C, distinct", [
    (1, 1, 1, 1, 1, None), (2, 3, 4, 5, 7, None), (2, 3, 3, 9, 8, None), (3, 5, 6, 11, 9, 2),
    (2, 4, 4, 7, 768, None), (4, 700, 700, 7, 16, 3), (3, 30, 40, 50, 130, None)])
def test_storage_shapes(kernel_runtime, kind, B, T, Tmax, V, C, distinct):
    """C around the 8-value pack (1, 7, 8, 9), long buckets, rows t >= T of dwpe."""
    check_storage(kernel_runtime, *make_inputs(B, T, Tmax, V, C, B + T + C, distinct), kind)


@given(B=st.integers(1, 4), T=st.integers(1, 12), extra=st.integers(0, 3), V=st.integers(1, 70),
       C=st.sampled_from(WIDTHS + [8, 16, 24]), distinct=st.sampled_from([None, 1, 3]),
       id_dtype=st.sampled_from([np.int32, np.int64]), kind=st.sampled_from(KINDS), seed=st.integers(0, 2**16))
def test_storage_matches_exact(kernel_runtime, B, T, extra, V, C, distinct, id_dtype, kind, seed):
    check_storage(kernel_runtime, *make_inputs(B, T, T + extra, V, C, seed, distinct, id_dtype), kind)


@pytest.mark.parametrize("kind", KINDS)
def test_storage_misaligned_tables_take_the_scalar_path(kernel_runtime, kind):
    rt = kernel_runtime
    check_storage(rt, *make_inputs(2, 6, 6, 10, 16, 4), kind, place=lambda a: device_shifted(rt, a))


@pytest.mark.parametrize("kind", KINDS)
def test_storage_wrapper(kernel_runtime, kind):
    """out of the tables' dtype, dwte and dwpe float32."""
    rt = kernel_runtime
    op = rt_op(rt)
    idx, wte, wpe, dout = make_inputs(2, 5, 8, 11, 16, 3)
    wt, wp, ds = storage(wte, kind), storage(wpe, kind), storage(dout, kind)
    out, cache = op.forward(rt.asarray(idx), rt.asarray(wt), rt.asarray(wp))
    want = (wt.astype(np.float32)[idx] + wp.astype(np.float32)[:5][None]).astype(wt.dtype)
    assert out.dtype == wt.dtype
    np.testing.assert_array_equal(rt.asnumpy(out).view(np.uint16), want.view(np.uint16))
    dwte, dwpe = op.backward(rt.asarray(ds), cache)
    r_dwte, r_dwpe = ref.backward(f64(ds), ref.forward(idx, f64(wt), f64(wp))[1])
    a_dwte, a_dwpe = ref.backward(np.abs(f64(ds)), ref.forward(idx, f64(wt), f64(wp))[1])
    assert_within(rt.asnumpy(dwpe), r_dwpe, gamma(2) * a_dwpe, "fp32", "dwpe", dtype=np.float32)
    counts = np.bincount(idx.ravel(), minlength=11)[:, None]
    assert_within(rt.asnumpy(dwte), r_dwte, gamma(counts) * a_dwte, "fp32", "dwte", dtype=np.float32)


def test_storage_dtypes_are_checked_by_name(host_runtime):
    rt, lib = host_runtime, host_runtime.lib
    op = rt_op(rt)
    idx, wte, wpe, dout = make_inputs(2, 4, 4, 10, 8, 0)
    status = np.zeros(1, np.int32)
    wb, pb = storage(wte, "bf16"), storage(wpe, "bf16")
    with pytest.raises(TypeError, match=r"^wpe: expected bfloat16 \(uint16 bits\) like wte, got float32"):
        op.forward(idx, wb, wpe)
    with pytest.raises(TypeError, match=r"^out: expected bfloat16 \(uint16 bits\) like wte, got float32"):
        lib.embedding_forward(np.empty((2, 4, 8), np.float32), idx, rt.bits(wb), rt.bits(pb), status)
    with pytest.raises(TypeError, match=r"^wte: expected float32, bfloat16 \(uint16 bits\) or float16, got int32"):
        lib.embedding_forward(np.empty((2, 4, 8), np.float32), idx, wte.astype(np.int32), wpe, status)
    with pytest.raises(TypeError, match=r"^dwte: expected float32, got float16"):
        lib.embedding_backward(np.empty(wte.shape, np.float16), np.empty_like(wpe), np.zeros(30, np.int32),
                               storage(dout, "fp16"), idx)
    with pytest.raises(TypeError, match=r"^dout: expected float32, bfloat16 \(uint16 bits\) or float16, got float64"):
        lib.embedding_backward(np.empty_like(wte), np.empty_like(wpe), np.zeros(30, np.int32), f64(dout), idx)
