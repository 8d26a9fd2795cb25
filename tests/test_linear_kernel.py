"""csrc/linear.cu against reference/linear.py (float64), on the host executor always and, marked
`cuda`, on the GPU: forward with fused bias, dx, dweight, dbias, for both kernel versions (1: the
naive baseline, 2: the tiled SGEMM). Outputs are poisoned with NaN before each launch, so an
element the kernel forgets to write fails. Host shapes stay small (the executor runs every
thread as a fiber); the big ones are marked slow.
"""
import numpy as np
import pytest
from kernelutil import given, st   # hypothesis, or a skip where it is not installed

from kernelutil import assert_sum_close, f64, rel_err
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
    with pytest.raises(TypeError, match=r"^x: expected float32, float16 or bfloat16 \(uint16 bits\), got int32"):
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


# ======================================================= bf16 / fp16 storage: the tensor-core GEMM
# Storage T = bfloat16 (ml_dtypes; it crosses the binding as its uint16 bits) or float16. Version 2
# runs mma.sync m16n8k16 with fp32 accumulation, fed by ldmatrix from a cp.async pipeline (the
# host executor emulates the three following the PTX ISA); version 1 is the naive kernel on T.
#
# Each output is compared, element by element, with the float64 product of the same T values
# (exact: every T value is a float64, and so is every product), within the bound of the roundings
# the kernel does (derived, not tuned):
#   - the K products are exact in fp32 (8 + 8 significant bits for bf16, 11 + 11 for fp16: at most
#     22 of fp32's 24), so the fp32 sum of the K products (and, in the forward, the bias) is a sum of
#     n = K (+1) exact terms with n - 1 additions in some order: |s_fp32 - s| <= gamma_n * sum|terms|,
#     gamma_n = n u / (1 - n u). The tensor cores' internal order and rounding are not specified
#     and may truncate, so u = 2^-23 per addition (tests/test_mma.py's reasoning); split-K adds its
#     partials in fp32 too, within the same n - 1 additions.
#   - out and dx are rounded once to T (round to nearest even): |y - s_fp32| <= u_T |s_fp32|, plus
#     half the smallest subnormal where the value underflows (fp16: 2^-25). With |s_fp32| <= |s| +
#     gamma_n sum|terms|:   |y - s| <= u_T |s| + (1 + u_T) gamma_n sum|terms| + floor_T,
#     u_bf16 = 2^-8, u_fp16 = 2^-11.
#   - dW and db stay fp32: |dW - s| <= gamma_rows * sum|terms| (no storage rounding).
# The bound is tight: the rounding to T alone reaches ~u_T |s| on some element of every shape here,
# so a second rounding (e.g. of the product before the bias is added) or a product in T fails it.
try:
    import ml_dtypes
except ImportError:
    ml_dtypes = None
needs_ml_dtypes = pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes is not installed (pip install "
                                     "ml_dtypes): it provides bfloat16")
U_ADD = 2.0 ** -23      # per fp32 addition, truncation allowed
KINDS = [pytest.param("bf16", marks=needs_ml_dtypes), "fp16"]   # fp16 runs where ml_dtypes is missing
KIND_NAMES = ["bf16", "fp16"] if ml_dtypes is not None else ["fp16"]


def storage(kind):
    """(dtype, unit roundoff u_T, half the smallest subnormal)."""
    if kind == "bf16":
        return np.dtype(ml_dtypes.bfloat16), 2.0 ** -8, 2.0 ** -134
    return np.dtype(np.float16), 2.0 ** -11, 2.0 ** -25


def gamma(n):
    return n * U_ADD / (1 - n * U_ADD)


def make_inputs16(lead, IN, OUT, kind, seed):
    """make_inputs' values rounded to T (the kernels' storage; weights ~ 1/sqrt(IN) as in GPT)."""
    T = storage(kind)[0]
    return [a.astype(T) for a in make_inputs(lead, IN, OUT, seed)]


def run16(rt, x, weight, bias, dout, version=2, place=None, backward=True):
    """Forward and backward on storage T through the bound launchers: out and dx poisoned with NaN
    in T, dweight, dbias and the workspace with NaN in float32. `place(a)` puts an input in device
    memory (default rt.asarray); bfloat16 crosses the binding as uint16 (rt.bits)."""
    lib, dev, T = rt.lib, place or rt.asarray, x.dtype
    poisoned = lambda shape, dtype=np.float32: rt.asarray(np.full(shape, np.nan, np.float32).astype(dtype))  # noqa: E731
    xd, wd, dd = dev(x), dev(weight), dev(dout)
    bd = None if bias is None else dev(bias)
    OUT = weight.shape[0]
    out = poisoned(x.shape[:-1] + (OUT,), T)
    lib.linear_forward(rt.bits(out), rt.bits(xd), rt.bits(wd), rt.bits(bd), version, rt.stream())
    if not backward:
        return rt.asnumpy(out), None, None, None
    rows = int(np.prod(x.shape[:-1]))
    dx, dweight = poisoned(x.shape, T), poisoned(weight.shape)
    dbias = None if bias is None else poisoned((OUT,))
    workspace = poisoned((lib.linear_backward_workspace(rows, x.shape[-1], OUT),))
    lib.linear_backward(rt.bits(dx), dweight, dbias, workspace, rt.bits(dd), rt.bits(xd), rt.bits(wd), version,
                        rt.stream())
    return [None if a is None else rt.asnumpy(a) for a in (out, dx, dweight, dbias)]


def assert_within(name, got, exact, bound):
    """|got - exact| <= bound element by element; NaN (an unwritten element) never passes."""
    got = np.asarray(got).astype(np.float64)
    assert got.shape == exact.shape, (name, got.shape, exact.shape)
    bad = ~(np.abs(got - exact) <= bound)
    if bad.any():
        i = np.unravel_index(np.argmax(bad), bad.shape)
        raise AssertionError(f"{name}: {bad.sum()} of {bad.size} elements outside the bound; first at {i}: "
                             f"got {got[i]!r}, exact {exact[i]!r}, bound {bound[i]:.3g}")


def check_forward16(out, x, weight, bias, kind):
    """out = round_T(fp32(x W^T) + b): n = IN products (+ the bias) summed in fp32, one rounding."""
    _, u, floor = storage(kind)
    ax, aw = (np.abs(f64(a)).reshape(-1, a.shape[-1]) for a in (x, weight))
    exact = f64(x).reshape(ax.shape) @ f64(weight).T
    terms = ax @ aw.T
    n = x.shape[-1]
    if bias is not None:
        exact, terms, n = exact + f64(bias), terms + np.abs(f64(bias)), n + 1
    bound = u * np.abs(exact) + (1 + u) * gamma(n) * terms + floor      # derived above
    assert_within("out", out.reshape(exact.shape), exact, bound)


def check_backward16(dx, dweight, dbias, x, weight, dout, kind):
    """dx = round_T(fp32(dy W)) (OUT products); dW = fp32(dy^T x), db = fp32 column sums (rows terms)."""
    _, u, floor = storage(kind)
    OUT, IN = weight.shape
    X, W, D = f64(x).reshape(-1, IN), f64(weight), f64(dout).reshape(-1, OUT)
    rows = X.shape[0]
    exact, terms = D @ W, np.abs(D) @ np.abs(W)
    assert_within("dx", dx.reshape(exact.shape), exact,
                  u * np.abs(exact) + (1 + u) * gamma(OUT) * terms + floor)       # one rounding to T
    assert dweight.dtype == np.float32
    assert_within("dweight", dweight, D.T @ X, gamma(rows) * (np.abs(D).T @ np.abs(X)))   # fp32, no rounding
    if dbias is None:
        return
    assert dbias.dtype == np.float32
    assert_within("dbias", dbias, D.sum(0), gamma(rows) * np.abs(D).sum(0))


def check16(rt, lead, IN, OUT, kind, seed, has_bias=True, version=2, place=None):
    x, weight, bias, dout = make_inputs16(lead, IN, OUT, kind, seed)
    bias = bias if has_bias else None
    out, dx, dweight, dbias = run16(rt, x, weight, bias, dout, version, place)
    assert out.dtype == x.dtype and dx.dtype == x.dtype
    check_forward16(out, x, weight, bias, kind)
    check_backward16(dx, dweight, dbias, x, weight, dout, kind)
    if has_bias:
        assert dbias is not None
    else:
        assert dbias is None


# sizes: one row (T = 1), K = 1, an exact mma tile (16 x 8 x 16), one 64-tile, several k tiles and
# blocks (128 x 96 x 80: 2 x 2 blocks of 64, three k tiles of 32), one past the tiles with rows that
# are not 16-byte aligned (129: the plain-load path), K not a multiple of 8 or 16
SHAPES16 = [([1], 1, 1), ([1], 200, 1), ([1], 64, 96), ([2], 1, 3), ([3], 5, 7), ([16], 16, 8),
            ([64], 64, 64), ([128], 96, 80), ([130], 129, 131), ([33], 40, 72), ([2, 9], 24, 40),
            ([17], 13, 70)]


@pytest.mark.parametrize("version", [2, 1])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lead, IN, OUT", SHAPES16)
def test_16bit_matches_the_rounded_product(kernel_runtime, kind, version, lead, IN, OUT):
    """Forward (with and without the bias), dx, dweight and dbias on bf16 / fp16 storage, against
    the float64 product of the same T values, within the bound derived above; both versions."""
    check16(kernel_runtime, lead, IN, OUT, kind, seed=IN + OUT, version=version)
    if version == 2:
        check16(kernel_runtime, lead, IN, OUT, kind, seed=IN * OUT + 1, has_bias=False)


@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), rows=st.integers(1, 70),
       IN=st.sampled_from(SIZES), OUT=st.sampled_from(SIZES), has_bias=st.booleans(),
       kind=st.sampled_from(KIND_NAMES), seed=st.integers(0, 2**16))
def test_16bit_property(kernel_runtime, lead, rows, IN, OUT, has_bias, kind, seed):
    check16(kernel_runtime, list(lead) + [rows], IN, OUT, kind, seed, has_bias)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lead, IN, OUT", [
    ([2100], 8, 2100),     # forward on 128 x 128 tiles (8 warps of 64 x 32), cp.async
    ([2100], 6, 2100),     # the same with rows of 12 bytes: plain loads, K < one mma step
    ([2100], 2100, 3),     # dx on 128-tiles (K = 3)
    ([5], 2100, 2100),     # dweight on 128-tiles (K = 5 rows)
])
def test_16bit_large_tiles(kernel_runtime, kind, lead, IN, OUT):
    """Enough 128 x 128 tiles to take the large tensor-core kernel, kept cheap by a short K."""
    check16(kernel_runtime, lead, IN, OUT, kind, seed=IN + OUT)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lead, IN, OUT", [
    ([3000], 40, 24),      # dweight: 24 x 40 summed over 3000 rows, cp.async (11 splits)
    ([1030], 13, 7),       # the same with unaligned rows (plain loads, 4 splits)
    ([5], 40, 2100),       # dx: 5 x 40 summed over 2100 outputs, split 8 ways; T written by the reduce
])
def test_16bit_split_k(kernel_runtime, kind, lead, IN, OUT):
    """Small outputs with a long K take split-K: fp32 partials, summed in split order (then rounded
    once to T for dx); within the bound, and two runs are bit-identical."""
    rt = kernel_runtime
    x, weight, bias, dout = make_inputs16(lead, IN, OUT, kind, IN)
    first = run16(rt, x, weight, bias, dout)
    check_forward16(first[0], x, weight, bias, kind)
    check_backward16(*first[1:], x, weight, dout, kind)
    for a, b in zip(first, run16(rt, x, weight, bias, dout)):
        np.testing.assert_array_equal(a.view(np.uint16) if a.itemsize == 2 else a,
                                      b.view(np.uint16) if b.itemsize == 2 else b)


def shifted16(rt, a):
    """`a` in device memory starting 2 bytes past a 16-byte boundary: cp.async may not read it."""
    buffer = rt.xp.zeros(a.size + 8, a.dtype)
    start = 1 if rt.backend != "host" else (-(buffer.ctypes.data // 2) % 8) + 1
    view = buffer[start:start + a.size].reshape(a.shape)
    view[...] = rt.asarray(a)
    if rt.backend == "host":
        assert view.ctypes.data % 16 == 2
    return view


@pytest.mark.parametrize("kind", KINDS)
def test_16bit_misaligned_arrays_take_the_plain_load_path(kernel_runtime, kind):
    """Every dimension a multiple of 8, but the arrays start 2 bytes off: the cp.async rows would
    be misaligned, so the operands come in by plain loads; the output pairs are stored singly."""
    rt = kernel_runtime
    check16(rt, [36], 24, 72, kind, seed=7, place=lambda a: shifted16(rt, a))
    x, weight, bias, _ = make_inputs16([36], 24, 72, kind, 8)
    out = shifted16(rt, np.full((36, 72), np.nan, np.float32).astype(x.dtype))
    rt.lib.linear_forward(rt.bits(out), rt.bits(rt.asarray(x)), rt.bits(rt.asarray(weight)),
                          rt.bits(rt.asarray(bias)), 2, rt.stream())
    check_forward16(rt.asnumpy(out), x, weight, bias, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_16bit_empty_dimensions(kernel_runtime, kind):
    """No rows: out empty, dweight and dbias zeros. IN = 0: out is the bias (rounded: it is T)."""
    rt = kernel_runtime
    check16(rt, [0], 16, 8, kind, seed=0)
    x, weight, bias, dout = make_inputs16([4], 0, 5, kind, 1)
    out, dx, dweight, dbias = run16(rt, x, weight, bias, dout)
    np.testing.assert_array_equal(f64(out), np.broadcast_to(f64(bias), (4, 5)))
    assert dx.shape == (4, 0) and dweight.shape == (5, 0)
    assert_within("dbias", dbias, f64(dout).sum(0), gamma(4) * np.abs(f64(dout)).sum(0))


@pytest.mark.parametrize("schedule", ["reverse", "random:5"])
@pytest.mark.parametrize("kind", KINDS)
def test_16bit_under_other_schedules_with_poison(host_runtime, monkeypatch, kind, schedule):
    """The cp.async pipeline's stages and its one barrier per k tile: any order of the threads,
    shared memory poisoned (NaN) at each block's start, gives the forward order's results bit for
    bit (several k tiles and blocks; cp.async and plain loads; a split-K product)."""
    rt = host_runtime
    cases = [make_inputs16([128], 96, 80, kind, 3), make_inputs16([70], 129, 33, kind, 4),
             make_inputs16([1030], 16, 8, kind, 5)]
    monkeypatch.setenv("SCRATCH_HOST_POISON", "1")
    want = [run16(rt, *c) for c in cases]
    monkeypatch.setenv("SCRATCH_HOST_SCHEDULE", schedule)
    for c, w in zip(cases, want):
        got = run16(rt, *c)
        check_forward16(got[0], c[0], c[1], c[2], kind)
        check_backward16(*got[1:], c[0], c[1], c[3], kind)
        for a, b in zip(got, w):
            np.testing.assert_array_equal(a.view(np.uint16) if a.itemsize == 2 else a,
                                          b.view(np.uint16) if b.itemsize == 2 else b)


@pytest.mark.parametrize("kind", KINDS)
def test_16bit_wrapper(kernel_runtime, kind):
    """kernels.linear.Linear takes T arrays (host or device): out and dx come back in T, dweight
    and dbias in float32, within the bounds above; both versions; with and without a bias."""
    from scratchgpt.kernels import REGISTRY
    rt = kernel_runtime
    op = REGISTRY["linear"](rt)
    x, weight, bias, dout = make_inputs16([2, 3], 40, 24, kind, 9)
    for version in (2, 1):
        op.version = version
        for b in (bias, None):
            out, cache = op.forward(rt.asarray(x), rt.asarray(weight), None if b is None else rt.asarray(b))
            dx, dweight, dbias = op.backward(rt.asarray(dout), cache)
            out, dx, dweight = rt.asnumpy(out), rt.asnumpy(dx), rt.asnumpy(dweight)
            assert out.dtype == x.dtype and out.shape == (2, 3, 24)
            assert dx.dtype == x.dtype and dweight.dtype == np.float32
            check_forward16(out, x, weight, b, kind)
            check_backward16(dx, dweight, None if dbias is None else rt.asnumpy(dbias), x, weight, dout, kind)
            assert (dbias is None) == (b is None)


@needs_ml_dtypes
def test_16bit_dtype_mixes_are_named(kernel_runtime):
    """A wrong dtype mix raises TypeError naming the argument, in the wrapper and in the binding."""
    from scratchgpt.kernels import REGISTRY
    rt = kernel_runtime
    lib, a = rt.lib, rt.asarray
    op = REGISTRY["linear"](rt)
    xb, wb, bb, db = (a(v) for v in make_inputs16([4], 8, 6, "bf16", 0))
    xh, wh, bh, dh = (a(v) for v in make_inputs16([4], 8, 6, "fp16", 0))
    with pytest.raises(TypeError, match=r"^weight: expected bfloat16 like x, got float16"):
        op.forward(xb, wh, bb)
    with pytest.raises(TypeError, match=r"^bias: expected float16 like x, got float32"):
        op.forward(xh, wh, a(np.zeros(6, np.float32)))
    with pytest.raises(TypeError, match=r"^weight: expected float32 like x, got bfloat16"):
        op.forward(a(np.zeros((4, 8), np.float32)), wb)
    _, cache = op.forward(xb, wb, bb)
    with pytest.raises(TypeError, match=r"^dout: expected bfloat16 like x, got float16"):
        op.backward(dh, cache)

    bits = rt.bits
    out_b, out_h = a(np.zeros((4, 6), np.uint16)), a(np.zeros((4, 6), np.float16))
    with pytest.raises(TypeError, match=r"^weight: expected bfloat16 \(uint16 bits\) like x, got float16"):
        lib.linear_forward(out_b, bits(xb), wh, bits(bb), 2, rt.stream())
    with pytest.raises(TypeError, match=r"^bias: expected float16 like x, got float32"):
        lib.linear_forward(out_h, xh, wh, a(np.zeros(6, np.float32)), 2, rt.stream())
    with pytest.raises(TypeError, match=r"^out: expected float16 like x, got float32"):
        lib.linear_forward(a(np.zeros((4, 6), np.float32)), xh, wh, bh, 2, rt.stream())
    with pytest.raises(TypeError, match=r"^x: expected float32, float16 or bfloat16 \(uint16 bits\), got float64"):
        lib.linear_forward(out_h, a(np.zeros((4, 8))), wh, bh, 2, rt.stream())
    ws = a(np.zeros(lib.linear_backward_workspace(4, 8, 6), np.float32))
    dx_h, dw, dbias = a(np.zeros((4, 8), np.float16)), a(np.zeros((6, 8), np.float32)), a(np.zeros(6, np.float32))
    with pytest.raises(TypeError, match=r"^dout: expected float16 like x, got bfloat16 \(uint16 bits\)"):
        lib.linear_backward(dx_h, dw, dbias, ws, bits(db), xh, wh, 2, rt.stream())
    with pytest.raises(TypeError, match=r"^dx: expected float16 like x, got float32"):
        lib.linear_backward(a(np.zeros((4, 8), np.float32)), dw, dbias, ws, dh, xh, wh, 2, rt.stream())
    with pytest.raises(TypeError, match=r"^dweight: expected float32 \(parameter gradients are float32\), "
                                       r"got float16"):
        lib.linear_backward(dx_h, a(np.zeros((6, 8), np.float16)), dbias, ws, dh, xh, wh, 2, rt.stream())
    with pytest.raises(TypeError, match=r"^dbias: expected float32 \(parameter gradients are float32\), "
                                       r"got bfloat16 \(uint16 bits\)"):
        lib.linear_backward(a(np.zeros((4, 8), np.uint16)), dw, a(np.zeros(6, np.uint16)), ws, bits(db),
                            bits(xb), bits(wb), 2, rt.stream())


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lead, IN, OUT", [([512], 768, 768), ([2100], 256, 2100), ([300], 257, 1023)])
def test_16bit_large(kernel_runtime, kind, lead, IN, OUT):
    """GPT-sized products: tens of k tiles through the pipeline, the 128-tiles with a long K, a
    split-K dweight over many rows, unaligned rows on long K."""
    check16(kernel_runtime, lead, IN, OUT, kind, seed=IN)
