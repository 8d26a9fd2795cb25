"""16-bit storage and tensor-core wrappers (core/half.h, core/mma.h) against NumPy and ml_dtypes.

The kernels are tests/kernels/mma_tests.cu. Each test runs on the host executor (whose emulation
it checks) and, marked `cuda`, on the GPU (where the same comparison checks this file's reading
of the PTX ISA against the hardware).

The fragment layouts below are written here, from the PTX ISA ("Matrix Fragments for
mma.m16n8k16 with floating point type", Figures 79, 81, 83; "Warp-level matrix load
instruction: ldmatrix", Figure 104), independently of core/mma.h: the fragment kernel only
moves registers between memory and the mma, so what is compared is the emulation's layout
against this one. Layouts changed on purpose (here, and in the emulation: test-only variants
of mma_tests.cu) must fail the same comparison.

References: the conversions are held bit for bit to ml_dtypes (bfloat16) and NumPy (float16);
the layout, GEMM and misuse tests need NumPy alone, so they run on a GPU machine without ml_dtypes.

Error bounds. Products of two bf16 or fp16 values are exact in fp32, so an mma computes a sum
of 17 exact terms (c and 16 products) with 16 fp32 additions; chained mma accumulating in place
make 16 R additions. Whatever the order, the error is at most gamma_n * sum |terms| with
gamma_n = n u / (1 - n u); u = 2^-24 for round to nearest, 2^-23 if the hardware truncates
(the tensor cores' internal rounding is not specified), so the bound uses 2^-23. The host's own
order (c, then k = 0 .. 15, fused multiply-adds) is checked bit for bit separately.
"""
import numpy as np
import pytest

try:
    import ml_dtypes
except ImportError:   # the GPU machine may lack it: only the bfloat16 rounding reference needs it
    ml_dtypes = None
needs_ml_dtypes = pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes is not installed (pip install "
                                     "ml_dtypes): it is the bfloat16 rounding reference")
BF16 = pytest.param("bf16", marks=needs_ml_dtypes)   # a kind whose test needs the bfloat16 reference
KINDS = {"bf16": 0, "fp16": 1}
U_TRUNCATE = 2.0 ** -23


def gamma(n, u=U_TRUNCATE):
    return n * u / (1 - n * u)


def reference_bits(x, kind):
    """float32 -> 16-bit patterns, rounded to nearest even by ml_dtypes / NumPy: the reference the
    conversion intrinsics are held to."""
    x = np.asarray(x, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        return (x.astype(ml_dtypes.bfloat16) if kind == "bf16" else x.astype(np.float16)).view(np.uint16)


def reference_values(bits, kind):
    """16-bit patterns -> float32 by ml_dtypes / NumPy."""
    bits = np.asarray(bits, np.uint16)
    with np.errstate(invalid="ignore"):
        return (bits.view(ml_dtypes.bfloat16) if kind == "bf16" else bits.view(np.float16)).astype(np.float32)


def to_bits(x, kind):
    """float32 -> 16-bit patterns, round to nearest even, with NumPy alone (operands of the mma tests,
    which run where ml_dtypes is missing; test_numpy_rounding_matches_ml_dtypes checks it)."""
    x = np.asarray(x, np.float32)
    if kind == "fp16":
        with np.errstate(over="ignore"):
            return x.astype(np.float16).view(np.uint16)
    u = x.view(np.uint32).astype(np.uint64)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    bits[np.isnan(x)] = 0x7FC0
    return bits


def from_bits(bits, kind):
    """16-bit patterns -> float64, exactly (bfloat16: the top half of a float32)."""
    bits = np.asarray(bits, np.uint16)
    with np.errstate(invalid="ignore"):   # NaN patterns stay NaN
        if kind == "bf16":
            return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        return bits.view(np.float16).astype(np.float64)


def is_nan_bits(bits, kind):
    bits = np.asarray(bits, np.uint32)
    if kind == "bf16":
        return ((bits & 0x7F80) == 0x7F80) & ((bits & 0x7F) != 0)
    return ((bits & 0x7C00) == 0x7C00) & ((bits & 0x3FF) != 0)


# ------------------------------------------------------------------------------ conversions
def run_convert(rt, x, bits_in, kind):
    n = x.size
    bits_out = rt.asarray(np.full((7, n), 0xABCD, np.uint16))
    floats_out = rt.asarray(np.full((5, n), np.nan, np.float32))
    rt.lib.mma_test_convert(bits_out, floats_out, rt.asarray(np.ascontiguousarray(x, np.float32)),
                            rt.asarray(np.ascontiguousarray(bits_in, np.uint16)), KINDS[kind], rt.stream())
    return rt.asnumpy(bits_out), rt.asnumpy(floats_out)


ROUNDING_PATHS = ["__float2X_rn", "__float2X", "__floats2X2_rn", "__float22X2_rn", "Storage::from_float",
                  "pack2", "__float2X2_rn"]
WIDENING_PATHS = ["__X2float", "__X22float2", "__low2float/__high2float", "Storage::to_float", "unpack2"]


def check_rounding(rt, got, x, kind):
    """Every rounding path of the kernel against the reference, bit for bit; NaN gives a NaN (on the
    host exactly 0x7fff, CUDA's canonical NaN, where ml_dtypes and NumPy keep the payload)."""
    want = reference_bits(x, kind)
    nan = np.isnan(x)
    for row, path in enumerate(ROUNDING_PATHS):
        bad = np.flatnonzero((got[row] != want) & ~nan)
        assert bad.size == 0, (f"{kind} {path}: {bad.size} value(s) rounded differently, first "
                               f"x={x[bad[0]]!r} (bits {x.view(np.uint32)[bad[0]]:#010x}): got "
                               f"{got[row][bad[0]]:#06x}, want {want[bad[0]]:#06x}")
        assert is_nan_bits(got[row][nan], kind).all(), f"{kind} {path}: a NaN input gave a non-NaN"
        if rt.backend == "host":
            assert (got[row][nan] == 0x7FFF).all(), f"{kind} {path}: NaN must give 0x7fff on the host"


def check_widening(got, bits, kind):
    """Every 16 -> 32-bit path against ml_dtypes / NumPy: exact for every non-NaN pattern; a NaN
    stays a NaN (bf16 keeps its bits: h << 16, as CUDA defines it)."""
    want = reference_values(bits, kind)
    nan = is_nan_bits(bits, kind)
    for row, path in enumerate(WIDENING_PATHS):
        g = got[row]
        bad = np.flatnonzero((g.view(np.uint32) != want.view(np.uint32)) & ~nan)
        assert bad.size == 0, (f"{kind} {path}: {bad.size} pattern(s) widened wrongly, first "
                               f"{bits[bad[0]]:#06x}: got {g[bad[0]]!r}, want {want[bad[0]]!r}")
        assert np.isnan(g[nan]).all(), f"{kind} {path}: a NaN pattern gave a number"
        if kind == "bf16":
            np.testing.assert_array_equal(g[nan].view(np.uint32), bits[nan].astype(np.uint32) << 16)


@pytest.mark.parametrize("kind", [BF16, "fp16"])
def test_every_16bit_pattern_widens_exactly_and_rounds_back(kernel_runtime, kind):
    """All 65,536 patterns: bits -> float exactly; the float -> bits again unchanged (NaN: 0x7fff)."""
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    values = reference_values(bits, kind)
    bits_out, floats_out = run_convert(kernel_runtime, values, bits, kind)
    check_widening(floats_out, bits, kind)
    nan = is_nan_bits(bits, kind)
    np.testing.assert_array_equal(bits_out[0][~nan], bits[~nan])   # the round trip is the identity
    check_rounding(kernel_runtime, bits_out, values, kind)


def edge_floats(kind):
    """Ties, near-ties, subnormals, the largest values, overflow, inf, NaN, signed zeros."""
    f32 = lambda u: np.asarray(u, np.uint32).view(np.float32)   # noqa: E731
    specials = f32([0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001,
                    0xFF800001, 0x7FFFFFFF, 0x7FBFFFFF, 0x00000001, 0x80000001, 0x007FFFFF, 0x00800000,
                    0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F7FFF, 0x7F7F8000, 0x7F7F8001, 0xFF7F8000, 0x3F808000,
                    0x3F818000, 0x00008000, 0x00018000])
    rng = np.random.default_rng(11)
    if kind == "bf16":
        # ties (dropped half exactly 0x8000) with even and odd kept parts, and one ulp either side
        kept = rng.integers(0, 0xFF80, 4000, dtype=np.uint32)
        kept = kept[(kept & 0x7F80) != 0x7F80]
        ties = (kept << 16) | 0x8000
        ties = np.concatenate([ties, ties - 1, ties + 1, ties | 0x80000000])
        return np.concatenate([specials, f32(ties)])
    # fp16: midpoints between neighbouring finite values (exact in float32), normals and
    # subnormals, with the float32 values just below and above them
    h = np.arange(0, 0x7BFF, dtype=np.uint32)
    lo, hi = from_bits(h.astype(np.uint16), "fp16"), from_bits((h + 1).astype(np.uint16), "fp16")
    mid = ((lo + hi) / 2).astype(np.float32)
    mid = mid[rng.permutation(mid.size)[:6000]]
    extra = np.array([65504, 65519, 65519.996, 65520, 65520.004, 65536, 1e5, 2.0 ** -14, 2.0 ** -24,
                      2.0 ** -25, 2.0 ** -26, 3 * 2.0 ** -26, 1.5 * 2.0 ** -24, 2.0 ** -14 - 2.0 ** -25], np.float32)
    near = np.concatenate([mid, extra])
    near = np.concatenate([near, np.nextafter(near, np.float32(np.inf)), np.nextafter(near, np.float32(0))])
    return np.concatenate([specials, near, -near])


@pytest.mark.parametrize("kind", [BF16, "fp16"])
def test_float_rounds_to_nearest_even_as_ml_dtypes(kernel_runtime, kind):
    """Random float32 bit patterns over the whole range, values around the 16-bit type's range, and
    the edge cases, through every rounding intrinsic, bit for bit."""
    rng = np.random.default_rng(5)
    patterns = rng.integers(0, 2 ** 32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    scale = 2.0 ** rng.integers(-30, 20, 100_000)
    values = (rng.standard_normal(100_000) * scale).astype(np.float32)
    x = np.concatenate([patterns, values, edge_floats(kind)])
    x = x[: x.size // 2 * 2]
    bits_out, _ = run_convert(kernel_runtime, x, np.zeros(x.size, np.uint16), kind)
    check_rounding(kernel_runtime, bits_out, x, kind)


@pytest.mark.parametrize("dtype", ["float32", BF16, "fp16"])
def test_one_source_templated_on_the_storage_type(kernel_runtime, dtype):
    """out = from_float(to_float(in) * scale): the same kernel for the three storage types, rounded
    as the reference rounds (float32 product, then round to nearest even), bit for bit."""
    rt = kernel_runtime
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(5001) * 2.0 ** rng.integers(-20, 20, 5001)).astype(np.float32)
    scale = np.float32(3.3)
    if dtype == "float32":
        xin, want = x, x * scale
    else:
        xin = reference_bits(x, dtype)
        want = reference_bits(from_bits(xin, dtype).astype(np.float32) * scale, dtype)
        if dtype == "fp16":   # NumPy's float16 crosses the binding as itself ('<f2')
            xin = xin.view(np.float16)
    out = rt.asarray(np.zeros_like(xin))
    rt.lib.mma_test_storage_scale(out, rt.asarray(xin), float(scale), rt.stream())
    bits = np.uint32 if dtype == "float32" else np.uint16
    np.testing.assert_array_equal(rt.asnumpy(out).view(bits), want.view(bits))


# ------------------------------------------------------------------- mma fragment layouts (ISA)
def isa_a(lane, i):
    """Multiplicand A, 16x16 .f16/.bf16: element a_i of `lane` (Figure 79)."""
    group, tig = lane >> 2, lane % 4
    row = group if (0 <= i < 2 or 4 <= i < 6) else group + 8
    col = tig * 2 + (i & 0x1) if i < 4 else tig * 2 + (i & 0x1) + 8
    return row, col


def isa_b(lane, i):
    """Multiplicand B, 16x8 (K x N) .f16/.bf16: element b_i of `lane` (Figure 81)."""
    group, tig = lane >> 2, lane % 4
    row = tig * 2 + (i & 0x1) if i < 2 else tig * 2 + (i & 0x1) + 8
    return row, group


def isa_c(lane, i):
    """Accumulators C/D, 16x8 fp32: element c_i of `lane` (Figure 83)."""
    group, tig = lane >> 2, lane % 4
    row = group if i < 2 else group + 8
    return row, tig * 2 + (i & 0x1)


# Deliberately wrong layouts: the comparison below must reject each.
WRONG_LAYOUTS = {
    "A transposed": (lambda l, i: isa_a(l, i)[::-1], isa_b, isa_c),
    "B halves swapped": (isa_a, lambda l, i: isa_b(l, i ^ 2), isa_c),
    "lanes of A permuted": (lambda l, i: isa_a(l ^ 1, i), isa_b, isa_c),
    "C transposed in 8x8 blocks": (isa_a, isa_b, lambda l, i: (isa_c(l, i)[1] + 8 * (i >= 2), l >> 2)),
}
ISA = (isa_a, isa_b, isa_c)


def pack_fragments(m, elements, position):
    """Registers [32, elements // 2] of matrix `m` (16-bit patterns): element 2r in the low half."""
    regs = np.zeros((32, elements // 2), np.uint32)
    for lane in range(32):
        for i in range(elements):
            regs[lane, i // 2] |= np.uint32(m[position(lane, i)]) << np.uint32(16 * (i % 2))
    return regs


def scatter_c(c, position):
    return np.array([[c[position(lane, i)] for i in range(4)] for lane in range(32)], np.float32)


def gather_d(frag, position):
    d = np.full((16, 8), np.nan)
    for lane in range(32):
        for i in range(4):
            d[position(lane, i)] = frag[lane, i]
    return d


def run_fragments(rt, a_bits, b_bits, c, kind, layout=ISA, repeat=1, warps_per_block=1, block_x=32, variant=0):
    """One mma chain per warp over matrices a_bits [W, 16, 16], b_bits [W, 16, 8], c [W, 16, 8];
    returns D [W, 16, 8] read back through `layout`'s C/D positions."""
    pa, pb, pc = layout
    fa = np.stack([pack_fragments(a, 8, pa) for a in a_bits]).view(np.int32)
    fb = np.stack([pack_fragments(b, 4, pb) for b in b_bits]).view(np.int32)
    fc = np.stack([scatter_c(m, pc) for m in c])
    d = rt.asarray(np.full(fc.shape, np.nan, np.float32))
    rt.lib.mma_test_fragments(d, rt.asarray(fa), rt.asarray(fb), rt.asarray(fc), KINDS[kind], repeat,
                              warps_per_block, block_x, variant, rt.stream())
    return np.stack([gather_d(f, pc) for f in rt.asnumpy(d)])


def check_mma(d, a_bits, b_bits, c, kind, repeat=1):
    """Element by element: D = C + repeat * A B (float64 of the rounded inputs), within the bound of
    16 * repeat fp32 additions."""
    a, b = from_bits(a_bits, kind), from_bits(b_bits, kind)
    want = c + repeat * (a @ b)
    terms = np.abs(c) + repeat * (np.abs(a) @ np.abs(b))
    bound = gamma(16 * repeat) * terms
    bad = ~(np.abs(d - want) <= bound)
    if bad.any():
        w, r, col = np.argwhere(bad)[0]
        raise AssertionError(f"{kind} mma: {bad.sum()} of {bad.size} elements outside the fp32 bound; first "
                             f"warp {w} D[{r}, {col}] = {d[w, r, col]!r}, want {want[w, r, col]!r} "
                             f"(bound {bound[w, r, col]:.3g})")


def random_operands(rng, kind, warps, scale=1.0):
    a = to_bits(rng.standard_normal((warps, 16, 16)) * scale, kind)
    b = to_bits(rng.standard_normal((warps, 16, 8)) * scale, kind)
    c = rng.standard_normal((warps, 16, 8)).astype(np.float32)
    return a, b, c


@pytest.mark.parametrize("kind", ["bf16", "fp16"])
def test_mma_fragments_follow_the_isa_layout(kernel_runtime, kind):
    """Random operands in the ISA's fragment layouts; several warps per block, the block 2-D (warps
    are counted by linear thread index), in-place accumulation twice."""
    rng = np.random.default_rng(3)
    a, b, c = random_operands(rng, kind, warps=8)
    d = run_fragments(kernel_runtime, a, b, c, kind, warps_per_block=4, block_x=16)
    check_mma(d, a, b, c, kind)
    d = run_fragments(kernel_runtime, a, b, c, kind, repeat=2, warps_per_block=2)
    check_mma(d, a, b, c, kind, repeat=2)


@pytest.mark.parametrize("kind", ["bf16", "fp16"])
def test_mma_exact_on_small_integers(kernel_runtime, kind):
    """Integers in [-8, 8]: every product and partial sum is exact in fp32, so D must equal the
    float64 product exactly, whatever the order of the sum; three chained mma in place."""
    rng = np.random.default_rng(4)
    a = to_bits(rng.integers(-8, 9, (4, 16, 16)), kind)
    b = to_bits(rng.integers(-8, 9, (4, 16, 8)), kind)
    c = rng.integers(-100, 101, (4, 16, 8)).astype(np.float32)
    d = run_fragments(kernel_runtime, a, b, c, kind, repeat=3)
    np.testing.assert_array_equal(d, c + 3 * (from_bits(a, kind) @ from_bits(b, kind)))


@pytest.mark.parametrize("kind", ["bf16", "fp16"])
def test_mma_host_order_bit_for_bit(host_runtime, kind):
    """The host emulation's documented order: start from c, add the products for k = 0 .. 15 in fp32
    (a fused multiply-add: each product is exact). NumPy's float32 does the same, bit for bit."""
    rng = np.random.default_rng(6)
    a, b, c = random_operands(rng, kind, warps=4, scale=3.0)
    d = run_fragments(host_runtime, a, b, c, kind, repeat=2)
    a32, b32 = from_bits(a, kind).astype(np.float32), from_bits(b, kind).astype(np.float32)
    acc = c.copy()
    for _ in range(2):
        for k in range(16):
            acc = (acc + a32[:, :, k:k + 1] * b32[:, k:k + 1, :]).astype(np.float32)
    np.testing.assert_array_equal(d.astype(np.float32).view(np.uint32), acc.view(np.uint32))


@pytest.mark.parametrize("wrong", list(WRONG_LAYOUTS))
def test_a_wrong_layout_in_the_test_is_caught(kernel_runtime, wrong):
    """Fragments built (or D read back) with a deliberately wrong layout fail the same comparison."""
    rng = np.random.default_rng(7)
    a, b, c = random_operands(rng, "bf16", warps=2)
    d = run_fragments(kernel_runtime, a, b, c, "bf16", layout=WRONG_LAYOUTS[wrong])
    with pytest.raises(AssertionError, match="outside the fp32 bound"):
        check_mma(d, a, b, c, "bf16")


@pytest.mark.parametrize("variant,wrong", [(1, "A transposed"), (2, "B halves swapped"),
                                           (3, "C/D transposed in 8x8 blocks")])
@pytest.mark.parametrize("kind", ["bf16", "fp16"])
def test_a_wrong_layout_in_the_emulation_is_caught(host_runtime, variant, wrong, kind):
    """The emulation compiled with a deliberately wrong layout (test-only variants in mma_tests.cu)
    fails the comparison that the real one passes."""
    rng = np.random.default_rng(8)
    a, b, c = random_operands(rng, kind, warps=2)
    check_mma(run_fragments(host_runtime, a, b, c, kind), a, b, c, kind)
    d = run_fragments(host_runtime, a, b, c, kind, variant=variant)
    with pytest.raises(AssertionError, match="outside the fp32 bound"):
        check_mma(d, a, b, c, kind)


@pytest.mark.parametrize("schedule", ["reverse", "random:7"])
def test_mma_under_other_schedules(host_runtime, monkeypatch, schedule):
    """The emulation's scratch is guarded by its own __syncwarp pair: any order of the lanes gives
    the same D (bit for bit, as the forward order)."""
    rng = np.random.default_rng(9)
    a, b, c = random_operands(rng, "fp16", warps=8)
    want = run_fragments(host_runtime, a, b, c, "fp16", repeat=2, warps_per_block=4, block_x=64)
    monkeypatch.setenv("SCRATCH_HOST_SCHEDULE", schedule)
    got = run_fragments(host_runtime, a, b, c, "fp16", repeat=2, warps_per_block=4, block_x=64)
    np.testing.assert_array_equal(got, want)


# -------------------------------------------------------------------------------- ldmatrix (ISA)
def isa_ldmatrix(tile, offsets, num, trans):
    """Registers [W, 32, num] per the ldmatrix layout (Figure 104): matrix j's rows are at the
    addresses of lanes 8j .. 8j+7; lane l receives (row l / 4, columns 2 (l % 4), 2 (l % 4) + 1) of
    each matrix, or with .trans (rows 2 (l % 4), 2 (l % 4) + 1, column l / 4)."""
    flat = tile.reshape(-1).astype(np.uint32)
    out = np.zeros(offsets.shape + (num,), np.uint32)
    for w in range(offsets.shape[0]):
        for lane in range(32):
            group, tig = lane >> 2, lane % 4
            for j in range(num):
                if not trans:
                    row = offsets[w, 8 * j + group]
                    lo, hi = flat[row + 2 * tig], flat[row + 2 * tig + 1]
                else:
                    lo, hi = flat[offsets[w, 8 * j + 2 * tig] + group], flat[offsets[w, 8 * j + 2 * tig + 1] + group]
                out[w, lane, j] = lo | (hi << 16)
    return out


def run_ldmatrix(rt, tile, offsets, num, trans, clobber=False):
    out = rt.asarray(np.full(offsets.shape + (num,), -1, np.int32))
    rt.lib.mma_test_ldmatrix(out, rt.asarray(tile), rt.asarray(offsets.astype(np.int32)), num, int(trans),
                             clobber=int(clobber), stream=rt.stream())
    return rt.asnumpy(out).view(np.uint32)


def ldmatrix_case(seed, warps=2):
    """A 40 x 24 tile of random 16-bit patterns; every lane of every warp points at a random row
    and one of the three 8-column blocks (so lanes past the ones read give addresses too)."""
    rng = np.random.default_rng(seed)
    tile = rng.integers(0, 65536, (40, 24), dtype=np.uint32).astype(np.uint16)
    offsets = rng.integers(0, 40, (warps, 32)) * 24 + rng.integers(0, 3, (warps, 32)) * 8
    return tile, offsets


@pytest.mark.parametrize("trans", [False, True])
@pytest.mark.parametrize("num", [1, 2, 4])
def test_ldmatrix_follows_the_isa_layout(kernel_runtime, num, trans):
    tile, offsets = ldmatrix_case(num + 10 * trans)
    got = run_ldmatrix(kernel_runtime, tile, offsets, num, trans)
    np.testing.assert_array_equal(got, isa_ldmatrix(tile, offsets, num, trans))
    # the comparison tells layouts apart: the transposed reading, or lanes shifted by one, differ
    assert (got != isa_ldmatrix(tile, offsets, num, not trans)).any()
    assert (got != isa_ldmatrix(tile, np.roll(offsets, 1, axis=1), num, trans)).any()


@pytest.mark.parametrize("schedule", ["reverse", "random:3"])
def test_ldmatrix_under_other_schedules(host_runtime, monkeypatch, schedule):
    monkeypatch.setenv("SCRATCH_HOST_SCHEDULE", schedule)
    tile, offsets = ldmatrix_case(21, warps=4)
    np.testing.assert_array_equal(run_ldmatrix(host_runtime, tile, offsets, 4, True),
                                  isa_ldmatrix(tile, offsets, 4, True))


@pytest.mark.parametrize("schedule", ["forward", "reverse", "random:5"])
@pytest.mark.parametrize("trans", [False, True])
def test_ldmatrix_reads_for_the_whole_warp_before_any_lane_runs_on(host_runtime, monkeypatch, schedule, trans):
    # each lane overwrites the row it addressed right after the ldmatrix: what every lane received
    # must still be the tile as it was (the emulation reads all rows at the warp's rendezvous)
    monkeypatch.setenv("SCRATCH_HOST_SCHEDULE", schedule)
    tile, offsets = ldmatrix_case(31 + trans, warps=1)
    np.testing.assert_array_equal(run_ldmatrix(host_runtime, tile, offsets, 4, trans, clobber=True),
                                  isa_ldmatrix(tile, offsets, 4, trans))


# ----------------------------------------------------------------- cp.async + ldmatrix + mma
def run_gemm(rt, a_bits, b_bits, kind, b_layout, variant=0):
    M = a_bits.shape[0]
    N = b_bits.shape[0] if b_layout else b_bits.shape[1]
    d = rt.asarray(np.full((M, N), np.nan, np.float32))
    rt.lib.mma_test_gemm(d, rt.asarray(a_bits), rt.asarray(b_bits), KINDS[kind], b_layout, variant, rt.stream())
    return rt.asnumpy(d)


def gemm_case(kind, M, N, K, b_layout, seed):
    rng = np.random.default_rng(seed)
    a = to_bits(rng.standard_normal((M, K)), kind)
    b = to_bits(rng.standard_normal((K, N)), kind)
    b_arg = np.ascontiguousarray(b.T) if b_layout else b
    if kind == "fp16":   # NumPy's float16 reaches the binding as '<f2'
        a, b_arg = a.view(np.float16), b_arg.view(np.float16)
    return a, b, b_arg


@pytest.mark.parametrize("b_layout", [0, 1])
@pytest.mark.parametrize("kind", ["bf16", "fp16"])
def test_gemm_through_cp_async_ldmatrix_and_mma(kernel_runtime, kind, b_layout):
    """The shape of a tensor-core GEMM: A [32, 48] times B (stored [K, N]: ldmatrix .trans; or
    [N, K]: plain), three k-steps through a two-stage cp.async pipeline. Bound: K fp32 additions."""
    M, N, K = 32, 16, 48
    a, b, b_arg = gemm_case(kind, M, N, K, b_layout, seed=12 + b_layout)
    d = run_gemm(kernel_runtime, a, b_arg, kind, b_layout)
    a64, b64 = from_bits(a.view(np.uint16), kind), from_bits(b, kind)
    bound = gamma(K) * (np.abs(a64) @ np.abs(b64))
    err = np.abs(d - a64 @ b64)
    assert (err <= bound).all(), f"max error {err.max():.3g}, bound there {bound.flat[err.argmax()]:.3g}"


def test_gemm_missing_cp_async_wait_is_exposed(host_runtime, monkeypatch):
    """cp.async on the host writes shared memory only at the wait: a kernel that reads before
    waiting reads poison (NaN), where a GPU would give the right answer only by luck of timing."""
    monkeypatch.setenv("SCRATCH_HOST_POISON", "1")
    a, b, b_arg = gemm_case("bf16", 16, 8, 32, 0, seed=13)
    good = run_gemm(host_runtime, a, b_arg, "bf16", 0)
    assert np.isfinite(good).all()
    bad = run_gemm(host_runtime, a, b_arg, "bf16", 0, variant=1)
    assert not np.isfinite(bad).all()


# --------------------------------------------------------------- accumulator -> A operand (P V)
@pytest.mark.parametrize("kind", ["bf16", "fp16"])
def test_accumulator_becomes_the_next_a_operand(kernel_runtime, kind):
    """P = A B1 stays in registers (two 16x8 accumulators), is rounded to the storage type in the A
    layout (accum_to_a: flash attention's P V) and multiplied by B2. P is checked against A B1; the
    output against round(P) B2 computed from the kernel's own P, within the 16-addition bound."""
    rt = kernel_runtime
    rng = np.random.default_rng(14)
    a = to_bits(rng.standard_normal((16, 16)), kind)
    b1 = to_bits(rng.standard_normal((16, 16)), kind)
    b2 = to_bits(rng.standard_normal((16, 8)), kind)
    view = (lambda x: x.view(np.float16)) if kind == "fp16" else (lambda x: x)
    out = rt.asarray(np.full((16, 8), np.nan, np.float32))
    p = rt.asarray(np.full((16, 16), np.nan, np.float32))
    rt.lib.mma_test_chain(out, p, rt.asarray(view(a)), rt.asarray(view(b1)), rt.asarray(view(b2)), KINDS[kind],
                          rt.stream())
    out, p = rt.asnumpy(out), rt.asnumpy(p)
    a64, b164, b264 = from_bits(a, kind), from_bits(b1, kind), from_bits(b2, kind)
    assert (np.abs(p - a64 @ b164) <= gamma(16) * (np.abs(a64) @ np.abs(b164))).all()
    p16 = from_bits(to_bits(p, kind), kind)
    assert (np.abs(out - p16 @ b264) <= gamma(16) * (np.abs(p16) @ np.abs(b264))).all()


# ------------------------------------------------------------------------- misuse (host only)
MISUSE = {
    "mma_divergent": r"mma_m16n8k16_bf16 .* met lane \d+, which is at no collective yet.*all 32 lanes",
    "mma_mixed": r"(mma_m16n8k16_f16|ldmatrix_x4) .* met lane \d+, which is at (ldmatrix_x4|mma_m16n8k16_f16)",
    "mma_partial_warp": r"every lane of the warp must take part, but warp 1 has only 16 lane\(s\)",
    "ldmatrix_misaligned": r"ldmatrix_x1: lane \d+ gives row address .* not 16-byte aligned",
    "cp_async_misaligned": r"cp_async_16: .* must both be 16-byte aligned",
}


@pytest.mark.parametrize("case", list(MISUSE))
def test_misuse_raises_naming_the_problem(host_runtime, case):
    assert set(host_runtime.lib.MMA_MISUSE_CASES) == set(MISUSE)
    with pytest.raises(RuntimeError, match=MISUSE[case]):
        host_runtime.lib.mma_test_misuse(case)


@needs_ml_dtypes
def test_numpy_rounding_matches_ml_dtypes():
    """The NumPy-only bfloat16 rounding that prepares the mma tests' operands is ml_dtypes'."""
    rng = np.random.default_rng(15)
    x = rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([x[~np.isnan(x)], edge_floats("bf16")])
    x = x[~np.isnan(x)]
    np.testing.assert_array_equal(to_bits(x, "bf16"), reference_bits(x, "bf16"))
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    ok = ~is_nan_bits(bits, "bf16")
    np.testing.assert_array_equal(from_bits(bits, "bf16")[ok], reference_values(bits, "bf16")[ok])


@needs_ml_dtypes
def test_bfloat16_crosses_the_binding_as_uint16(host_runtime):
    """ml_dtypes' bfloat16 arrays report typestr '<V2' (any 2-byte record): refused; their uint16
    view is taken, and a dtype the launcher does not expect is named."""
    x = np.ones(4, np.float32).astype(ml_dtypes.bfloat16)
    with pytest.raises(TypeError, match="unsupported dtype"):
        host_runtime.lib.mma_test_storage_scale(np.zeros_like(x), x, 1.0)
    out = np.zeros(4, np.uint16)
    host_runtime.lib.mma_test_storage_scale(out, x.view(np.uint16), 2.0)
    np.testing.assert_array_equal(out.view(ml_dtypes.bfloat16).astype(np.float32), 2.0)
    with pytest.raises(TypeError, match="expected uint16, got float32"):
        host_runtime.lib.mma_test_storage_scale(np.zeros(4, np.float32), x.view(np.uint16), 1.0)
