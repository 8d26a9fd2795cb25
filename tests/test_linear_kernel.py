"""csrc/linear.cu against reference/linear.py (float64), on the host executor always and, marked
`cuda`, on the GPU: forward with fused bias, dx, dweight, dbias, for both kernel versions (1: the
naive baseline, 2: the tiled SGEMM). Outputs are poisoned with NaN before each launch, so an
element the kernel forgets to write fails. Host shapes stay small (the executor runs every
thread as a fiber); the big ones are marked slow.
"""
import numpy as np
import pytest
from kernelutil import given, st   # hypothesis, or a skip where it is not installed

from kernelutil import assert_sum_close, rel_err
from scratchgpt.reference import linear as ref

# sizes around the 4-wide vectors and the 64 / 128 tiles, and GPT-ish widths
SIZES = [1, 2, 3, 4, 5, 7, 8, 16, 31, 33, 63, 64, 65, 96, 127, 128, 129, 200]


def make_inputs(lead, IN, OUT, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(tuple(lead) + (IN,)).astype(np.float32)
    weight = (rng.standard_normal((OUT, IN)) / np.sqrt(max(IN, 1))).astype(np.float32)
    bias = rng.standard_normal(OUT).astype(np.float32)
    dout = rng.standard_normal(tuple(lead) + (OUT,)).astype(np.float32)
    return x, weight, bias, dout


def run_kernels(rt, x, weight, bias, dout, version=2, place=None):
    """Forward and backward through the bound launchers, outputs poisoned with NaN. `place(a)`
    puts an input in device memory (default: rt.asarray)."""
    lib, dev = rt.lib, place or rt.asarray
    poisoned = lambda shape: rt.asarray(np.full(shape, np.nan, np.float32))   # noqa: E731
    xd, wd, dd = dev(x), dev(weight), dev(dout)
    bd = None if bias is None else dev(bias)
    OUT = weight.shape[0]
    out = poisoned(x.shape[:-1] + (OUT,))
    lib.linear_forward(out, xd, wd, bd, version, rt.stream())
    rows = int(np.prod(x.shape[:-1]))
    dx, dweight = poisoned(x.shape), poisoned(weight.shape)
    dbias = None if bias is None else poisoned((OUT,))
    workspace = poisoned((lib.linear_backward_workspace(rows, x.shape[-1], OUT),))
    lib.linear_backward(dx, dweight, dbias, workspace, dd, xd, wd, version, rt.stream())
    return [None if a is None else rt.asnumpy(a) for a in (out, dx, dweight, dbias)]


def check_against_reference(rt, x, weight, bias, dout, version=2, place=None, tol=1e-5):
    out, dx, dweight, dbias = run_kernels(rt, x, weight, bias, dout, version, place)
    f64 = lambda a: None if a is None else a.astype(np.float64)   # noqa: E731
    r_out, cache = ref.forward(f64(x), f64(weight), f64(bias))
    r_dx, r_dweight, r_dbias = ref.backward(f64(dout), cache)
    long = 10 * tol if max(x.shape[-1], weight.shape[0], x.size // max(x.shape[-1], 1)) > 256 else tol
    # each output is a float32 sum: where its terms cancel, the error is bounded by the sum of
    # their magnitudes (the same products on absolute values), not by the result
    ax, aw, ad = (np.abs(f64(a)).reshape(-1, a.shape[-1]) for a in (x, weight, dout))
    IN, OUT, rows = weight.shape[1], weight.shape[0], ax.shape[0]
    abs_out = ax @ aw.T + (0 if bias is None else np.abs(f64(bias)))
    for name, got, want, want_abs, terms in (
            ("out", out, r_out, abs_out, IN + 1), ("dx", dx, r_dx, ad @ aw, OUT),
            ("dweight", dweight, r_dweight, ad.T @ ax, rows)):
        if want.size:
            assert_sum_close(got, want, want_abs.reshape(want.shape), terms, long)
    if bias is None:
        assert dbias is None
    else:
        assert_sum_close(dbias, r_dbias, ad.sum(0), rows, long)


@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), rows=st.integers(1, 70),
       IN=st.sampled_from(SIZES), OUT=st.sampled_from(SIZES), has_bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_matches_reference(kernel_runtime, lead, rows, IN, OUT, has_bias, seed):
    x, weight, bias, dout = make_inputs(list(lead) + [rows], IN, OUT, seed)
    check_against_reference(kernel_runtime, x, weight, bias if has_bias else None, dout)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("M, IN, OUT", [
    (1, 1, 1), (1, 200, 1), (200, 1, 3), (1, 7, 130), (130, 129, 131), (64, 64, 64), (3, 5, 7)])
def test_edge_shapes(kernel_runtime, version, M, IN, OUT):
    """One row (M = 1), K = 1, one output, sizes one past the tiles; both versions."""
    check_against_reference(kernel_runtime, *make_inputs([M], IN, OUT, M + IN + OUT), version=version)


@pytest.mark.parametrize("lead, IN, OUT", [
    ([2100], 8, 2100),    # forward on 128 x 128 tiles, float4 loads
    ([2100], 6, 2100),    # the same with scalar loads (K % 4 != 0)
    ([2100], 2100, 3),    # dx on 128-tiles (K = 3)
    ([5], 2100, 2100),    # dweight on 128-tiles (K = 5 rows)
])
def test_large_tiles(kernel_runtime, lead, IN, OUT):
    """Shapes with enough 128 x 128 tiles to take the large-tile kernel, kept cheap by a short K."""
    check_against_reference(kernel_runtime, *make_inputs(lead, IN, OUT, IN + OUT))


@pytest.mark.parametrize("lead, IN, OUT", [([3000], 40, 24), ([2, 1100], 64, 36), ([1030], 13, 7)])
def test_split_k(kernel_runtime, lead, IN, OUT):
    """A small dweight summed over many rows takes the split-K path (partials + ordered sum);
    float4 and scalar loads; two runs are bit-identical."""
    rt = kernel_runtime
    inputs = make_inputs(lead, IN, OUT, IN)
    check_against_reference(rt, *inputs)
    first, second = run_kernels(rt, *inputs), run_kernels(rt, *inputs)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_empty_dimensions(kernel_runtime):
    """No rows: out is empty and dweight, dbias are zeros. IN = 0: out is the bias."""
    check_against_reference(kernel_runtime, *make_inputs([0], 6, 5, 0))
    rt = kernel_runtime
    x, weight, bias, dout = make_inputs([4], 0, 5, 1)
    out, dx, dweight, dbias = run_kernels(rt, x, weight, bias, dout)
    np.testing.assert_array_equal(out, np.broadcast_to(bias, (4, 5)))
    assert dx.shape == (4, 0) and dweight.shape == (5, 0)
    assert rel_err(dbias, dout.sum(0).astype(np.float64)) < 1e-6
    from scratchgpt.kernels import REGISTRY
    op = REGISTRY["linear"](rt)
    out, cache = op.forward(rt.asarray(x), rt.asarray(weight), rt.asarray(bias))
    dx, dweight, dbias = op.backward(rt.asarray(dout), cache)
    np.testing.assert_array_equal(rt.asnumpy(out), np.broadcast_to(bias, (4, 5)))
    assert rel_err(rt.asnumpy(dbias), dout.sum(0).astype(np.float64)) < 1e-6


def shifted(rt, a):
    """`a` in device memory starting 4 bytes past a 16-byte boundary: no float4 access allowed."""
    buffer = rt.xp.zeros(a.size + 1, np.float32)
    buffer[1:] = rt.asarray(a.reshape(-1))
    view = buffer[1:].reshape(a.shape)
    if rt.backend == "host":
        assert view.ctypes.data % 16 != 0
    return view


def test_misaligned_arrays_take_the_scalar_path(kernel_runtime):
    """Every dimension a multiple of 4, but the arrays start 4 bytes off: float4 may not run."""
    rt = kernel_runtime
    x, weight, bias, dout = make_inputs([36], 20, 68, 7)
    check_against_reference(rt, x, weight, bias, dout, place=lambda a: shifted(rt, a))
    out = shifted(rt, np.full((36, 68), np.nan, np.float32))   # a misaligned output too
    rt.lib.linear_forward(out, rt.asarray(x), rt.asarray(weight), rt.asarray(bias), 2, rt.stream())
    r_out, _ = ref.forward(x.astype(np.float64), weight.astype(np.float64), bias.astype(np.float64))
    assert rel_err(rt.asnumpy(out), r_out) < 1e-5


def test_versions_agree_and_backward_is_deterministic(kernel_runtime):
    rt = kernel_runtime
    inputs = make_inputs([3, 100], 72, 40, 11)
    naive = run_kernels(rt, *inputs, version=1)
    tiled = run_kernels(rt, *inputs, version=2)
    again = run_kernels(rt, *inputs, version=2)
    for a, b, c in zip(naive, tiled, again):
        assert rel_err(a, b.astype(np.float64)) < 1e-6
        np.testing.assert_array_equal(b, c)   # bit-identical: no atomics, fixed summation order


def test_wrapper_matches_reference_interface(kernel_runtime):
    """kernels.linear.Linear: forward(x [..., IN], weight, bias=None) -> out, cache;
    backward(dout, cache) -> dx, dweight, dbias (None without a bias)."""
    from scratchgpt.kernels import REGISTRY
    rt = kernel_runtime
    op = REGISTRY["linear"](rt)
    x, weight, bias, dout = make_inputs([2, 3], 24, 10, 5)
    f64 = lambda a: a.astype(np.float64)   # noqa: E731
    for b in (bias, None):
        out, cache = op.forward(rt.asarray(x), rt.asarray(weight), None if b is None else rt.asarray(b))
        dx, dweight, dbias = op.backward(rt.asarray(dout), cache)
        r_out, r_cache = ref.forward(f64(x), f64(weight), None if b is None else f64(b))
        r_dx, r_dweight, r_dbias = ref.backward(f64(dout), r_cache)
        assert out.shape == (2, 3, 10) and dx.shape == x.shape
        assert rel_err(rt.asnumpy(out), r_out) < 1e-5
        assert rel_err(rt.asnumpy(dx), r_dx) < 1e-5
        assert rel_err(rt.asnumpy(dweight), r_dweight) < 1e-5
        if b is None:
            assert dbias is None
        else:
            assert rel_err(rt.asnumpy(dbias), r_dbias) < 1e-5
    op.version = 1
    out, _ = op.forward(rt.asarray(x), rt.asarray(weight), rt.asarray(bias))
    assert rel_err(rt.asnumpy(out), ref.forward(f64(x), f64(weight), f64(bias))[0]) < 1e-5


def test_arguments_are_checked_by_name(host_runtime):
    from scratchgpt.kernels import REGISTRY
    op = REGISTRY["linear"](host_runtime)
    lib = host_runtime.lib
    x, weight, bias, dout = make_inputs([4], 8, 6, 0)
    with pytest.raises(TypeError, match=r"^x: the host backend stores float32, bfloat16 or float16, got float64"):
        op.forward(x.astype(np.float64), weight, bias)
    with pytest.raises(ValueError, match=r"^weight: expected shape \(\*, 8\) to match x's last axis, got \(6, 7\)"):
        op.forward(x, weight[:, :7].copy(), bias)
    with pytest.raises(ValueError, match=r"^weight: expected 2 dimensions"):
        op.forward(x, weight.reshape(-1), bias)
    with pytest.raises(ValueError, match=r"^bias: expected shape \(6,\), got \(5,\)"):
        op.forward(x, weight, bias[:5])
    with pytest.raises(ValueError, match=r"^x: expected a C-contiguous array"):
        op.forward(np.zeros((8, 4), np.float32).T, weight, bias)
    with pytest.raises(ValueError, match=r"^version: expected 1 \(naive\) or 2 \(tiled\), got 3"):
        op.version = 3
    out = np.empty((4, 6), np.float32)
    with pytest.raises(ValueError, match=r"^version: expected 1 \(naive\) or 2 \(tiled\), got 0"):
        lib.linear_forward(out, x, weight, bias, 0)
    with pytest.raises(ValueError, match=r"^out: expected shape \(4, 6\), got \(4, 5\)"):
        lib.linear_forward(np.empty((4, 5), np.float32), x, weight, bias)
    with pytest.raises(TypeError, match=r"^x: expected float32, got int32"):
        lib.linear_forward(out, x.astype(np.int32), weight, bias)
    square = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match=r"^out: must not share memory with x"):
        lib.linear_forward(square, square, np.ones((4, 4), np.float32))
    dx, dweight, dbias = np.empty_like(x), np.empty_like(weight), np.empty(6, np.float32)
    with pytest.raises(ValueError, match=r"^workspace: expected at least 6 floats \(linear_backward_workspace\), got 2"):
        lib.linear_backward(dx, dweight, dbias, np.empty(2, np.float32), dout, x, weight)
    with pytest.raises(ValueError, match=r"^dout: expected shape \(4, 6\), got \(4, 5\)"):
        lib.linear_backward(dx, dweight, dbias, np.empty(6, np.float32), dout[:, :5].copy(), x, weight)
    with pytest.raises(ValueError, match=r"^dx: must not share memory with x"):
        lib.linear_backward(dout, np.empty((6, 6), np.float32), dbias, np.empty(6, np.float32), dout, dout,
                            np.ones((6, 6), np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("M, IN, OUT", [(512, 768, 768), (300, 257, 1023), (1024, 128, 3072)])
def test_large(kernel_runtime, version, M, IN, OUT):
    check_against_reference(kernel_runtime, *make_inputs([M], IN, OUT, M), version=version)


# ------------------------------------------------------------------ grid limits (host, cheap shapes)
# Each case has rows just past a limit the launch grid once had (grid.y <= 65535 blocks, checked
# on the host too): ceil(M / 8) for the naive kernel, ceil(M / 128) for the 128-tiles the tiled
# kernel takes at these sizes (64-tiles only serve fewer than 2 * 132 tiles), ceil(M / 256) for
# the db partial sums. Tiny feature widths keep millions of rows to a few seconds.
def test_naive_past_the_old_grid_limit(host_runtime):
    rt = host_runtime
    M = 65535 * 8 + 1
    x, weight, bias, dout = make_inputs([M], 3, 2, 11)
    out, dx, dweight, dbias = run_kernels(rt, x, weight, bias, dout, version=1)
    f64 = lambda a: a.astype(np.float64)   # noqa: E731
    assert_sum_close(out, f64(x) @ f64(weight).T + bias, np.abs(f64(x)) @ np.abs(f64(weight)).T + np.abs(bias), 4)
    assert_sum_close(dx, f64(dout) @ f64(weight), np.abs(f64(dout)) @ np.abs(f64(weight)), 2)
    assert_sum_close(dweight, f64(dout).T @ f64(x), np.abs(f64(dout)).T @ np.abs(f64(x)), M)
    assert_sum_close(dbias, f64(dout).sum(0), np.abs(f64(dout)).sum(0), M)


def test_tiled_past_the_old_grid_limit(host_runtime):
    rt = host_runtime
    M = 65535 * 128 + 1
    x, weight, bias, _ = make_inputs([M], 1, 1, 12)
    out = np.full((M, 1), np.nan, np.float32)
    rt.lib.linear_forward(out, x, weight, bias, 2, rt.stream())
    np.testing.assert_allclose(out, x.astype(np.float64) * weight[0, 0] + bias[0], rtol=1e-6, atol=1e-6)


def test_dbias_past_the_old_grid_limit(host_runtime):
    """IN = 0 leaves dx and dweight empty (no product runs): only db's partial sums and their
    chunk-ordered total."""
    rt = host_runtime
    M = 65535 * 256 + 1
    dout = np.random.default_rng(13).standard_normal((M, 2)).astype(np.float32)
    x, weight = np.zeros((M, 0), np.float32), np.zeros((2, 0), np.float32)
    dbias = np.full(2, np.nan, np.float32)
    workspace = np.full(rt.lib.linear_backward_workspace(M, 0, 2), np.nan, np.float32)
    rt.lib.linear_backward(np.zeros((M, 0), np.float32), np.zeros((2, 0), np.float32), dbias, workspace,
                           dout, x, weight, 2, rt.stream())
    assert_sum_close(dbias, dout.astype(np.float64).sum(0), np.abs(dout.astype(np.float64)).sum(0), M)
