"""csrc/quant_linear.cu against reference/quant_linear.py, on the host executor always and, marked
`cuda`, on the GPU: the dequantisation bit for bit, the GEMM (prefill) and the GEMV (decode) on
odd shapes, every int4 group size, both GEMV paths (4-byte words, single bytes), fp32 and bf16
activations, and the refusals. Outputs are poisoned with NaN before each launch. Shapes stay
small: these tests also run under the executor's reverse / random schedules and ASan.
"""
import numpy as np
import pytest

from kernelutil import STORAGE_TYPES, U32, UNIT_ROUNDOFF, assert_sum_close, poisoned
from scratchgpt.reference import quant_linear as ql

GROUPS = [2, 4, 8, 16, 32, 64, 128]


def make(N, K, bits, G=0, seed=0, M=3, lead=None):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, K)) * rng.uniform(0.1, 2.0, size=(N, 1))
    qw = ql.quantize_rtn(w.astype(np.float32), bits, G)
    x = rng.standard_normal(((M,) if lead is None else tuple(lead)) + (K,)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    return qw, x, bias


def on(rt, qw):
    """qw's arrays on the runtime's device, int8 as its uint8 bits (as the wrapper passes them)."""
    from scratchgpt.kernels.quant_linear import QuantLinear
    return QuantLinear(rt).on_backend(qw)


def launch(rt, qw, x, bias=None, version=0, place=None):
    place = place or rt.asarray
    d = on(rt, qw)
    out = poisoned(rt, x.shape[:-1] + (qw.shape[0],), x.dtype)
    xb = place(x)
    bits = lambda a: a.view(np.uint16) if a is not None and a.dtype.name == "bfloat16" else a  # noqa: E731
    rt.lib.quant_linear_forward(bits(out), bits(xb), d.qweight.view(np.uint8), d.scale, d.zero,
                                None if bias is None else bits(place(bias)), qw.bits, qw.group_size,
                                version, rt.stream())
    return rt.asnumpy(out)


def check(rt, qw, x, bias, version, tol=1e-5):
    got = launch(rt, qw, x, bias, version)
    w = ql.dequantize(qw).astype(np.float64)
    x64 = x.astype(np.float64).reshape(-1, x.shape[-1])
    want = x64 @ w.T + (0 if bias is None else bias.astype(np.float64))
    want_abs = np.abs(x64) @ np.abs(w).T + (0 if bias is None else np.abs(bias.astype(np.float64)))
    assert_sum_close(got.reshape(want.shape), want, want_abs, x.shape[-1] + 1, tol)


# ------------------------------------------------------------------------- dequantisation
@pytest.mark.parametrize("bits,G", [(8, 0)] + [(4, g) for g in GROUPS])
def test_dequantize_is_bit_exact(kernel_runtime, bits, G):
    rt = kernel_runtime
    N, K = 7, max(G, 2) * 3 if bits == 4 else 37
    qw, _, _ = make(N, K, bits, G, seed=G)
    d = on(rt, qw)
    out = poisoned(rt, (N, K))
    rt.lib.quant_linear_dequantize(out, d.qweight.view(np.uint8), d.scale, d.zero, bits, G, rt.stream())
    np.testing.assert_array_equal(rt.asnumpy(out), ql.dequantize(qw))


# ---------------------------------------------------------------------------- GEMM / GEMV
SHAPES = [(1, 1, 8), (3, 5, 8), (8, 33, 40), (9, 65, 24), (70, 100, 72), (65, 64, 136)]


@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("bits", [8, 4])
def test_forward_matches_reference(kernel_runtime, M, N, K, bits):
    qw, x, bias = make(N, K, bits, 8 if bits == 4 else 0, seed=M * N + K, M=M)
    versions = [0, 1] + ([2] if M <= 8 else [])
    for version in versions:
        check(kernel_runtime, qw, x, bias, version)
    check(kernel_runtime, qw, x, None, 0)


@pytest.mark.parametrize("G", GROUPS)
def test_every_group_size(kernel_runtime, G):
    K = 2 * G if G < 128 else 128
    qw, x, bias = make(6, K, 4, G, seed=G, M=5)
    for version in (1, 2):
        check(kernel_runtime, qw, x, bias, version)


def test_leading_dimensions_and_odd_widths(kernel_runtime):
    # int8 with K = 37 (rows of 37 bytes: the byte path), int4 with K = 6 (3-byte rows)
    for bits, G, K in ((8, 0, 37), (4, 2, 6), (4, 6, 18)):
        qw, x, bias = make(11, K, bits, G, seed=K, lead=(2, 3))
        for version in (1, 2):
            check(kernel_runtime, qw, x, bias, version)


def test_gemv_word_and_byte_paths_agree_with_a_misaligned_weight(host_runtime):
    """The same weights from a 4-byte aligned buffer (word loads) and 1 byte off (byte loads)."""
    rt = host_runtime
    qw, x, bias = make(9, 64, 4, 16, seed=3, M=1)
    aligned = launch(rt, qw, x, bias, 2)
    buf = np.zeros(qw.qweight.size + 1, np.uint8)
    shifted = buf[1:].reshape(qw.qweight.shape)
    shifted[...] = qw.qweight
    assert shifted.ctypes.data % 4 != 0
    moved = ql.QuantizedWeight(4, shifted, qw.scale, qw.zero, 16)
    out = poisoned(rt, (1, 9))
    rt.lib.quant_linear_forward(out, x, moved.qweight, moved.scale, moved.zero, bias, 4, 16, 2, 0)
    np.testing.assert_allclose(out, aligned, rtol=1e-6, atol=1e-6)
    check(rt, moved, x, bias, 2)


def test_gemm_does_not_depend_on_the_grid(kernel_runtime):
    """Each output sums over k in order: the same bits whichever tile computes it."""
    qw, x, bias = make(70, 96, 4, 32, seed=1, M=130)
    full = launch(kernel_runtime, qw, x, bias, 1)
    part = launch(kernel_runtime, qw, x[:67], bias, 1)
    np.testing.assert_array_equal(full[:67], part)


@pytest.mark.parametrize("version", [1, 2])
def test_bf16_activations(kernel_runtime, version):
    """x, bias and out in bfloat16: fp32 products and sum, one rounding to bf16 at the end."""
    bf16 = STORAGE_TYPES["bf16"]
    qw, x, bias = make(40, 64, 4, 16, seed=2, M=4)
    xb, bb = x.astype(bf16), bias.astype(bf16)
    got = launch(kernel_runtime, qw, xb, bb, version).astype(np.float64)
    w = ql.dequantize(qw).astype(np.float64)
    x64, b64 = xb.astype(np.float64), bb.astype(np.float64)
    exact = x64 @ w.T + b64
    e32 = (64 + 1) * U32 * (np.abs(x64) @ np.abs(w).T + np.abs(b64))
    assert (np.abs(got - exact) <= UNIT_ROUNDOFF["bf16"] * np.abs(exact) + e32 + 1e-30).all()


# ----------------------------------------------------------------------------- refusals
def test_refusals(host_runtime):
    rt, lib = host_runtime, host_runtime.lib
    qw, x, bias = make(4, 64, 4, 16, M=2)
    out = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="group_size: 24 does not divide K = 64"):
        lib.quant_linear_forward(out, x, qw.qweight, qw.scale, qw.zero, None, 4, 24, 0, 0)
    with pytest.raises(ValueError, match="group_size: expected an even number"):
        lib.quant_linear_forward(out, x, qw.qweight, qw.scale, qw.zero, None, 4, 1, 0, 0)
    with pytest.raises(ValueError, match="zero: int4 weights need"):
        lib.quant_linear_forward(out, x, qw.qweight, qw.scale, None, None, 4, 16, 0, 0)
    with pytest.raises(ValueError, match="bits: expected 8 or 4"):
        lib.quant_linear_forward(out, x, qw.qweight, qw.scale, qw.zero, None, 3, 16, 0, 0)
    with pytest.raises(ValueError, match="qweight: expected shape"):
        lib.quant_linear_forward(out, np.ascontiguousarray(x[:, :32]), qw.qweight, qw.scale, qw.zero, None, 4, 16, 0, 0)
    with pytest.raises(TypeError, match="scale: expected float32"):
        lib.quant_linear_forward(out, x, qw.qweight, qw.scale.astype(np.float64), qw.zero, None, 4,
                                 16, 0, 0)
    with pytest.raises(ValueError, match="out: expected"):
        lib.quant_linear_forward(np.zeros((2, 5), np.float32), x, qw.qweight, qw.scale, qw.zero,
                                 None, 4, 16, 0, 0)
    big = np.zeros((9, 64), np.float32)
    with pytest.raises(ValueError, match="GEMV kernel takes at most 8 rows"):
        lib.quant_linear_forward(np.zeros((9, 4), np.float32), big, qw.qweight, qw.scale, qw.zero,
                                 None, 4, 16, 2, 0)
    q8 = ql.quantize_rtn(np.ones((4, 64), np.float32), 8)
    with pytest.raises(ValueError, match="zero: int8 weights are symmetric"):
        lib.quant_linear_forward(out, x, q8.qweight.view(np.uint8), q8.scale, qw.zero, None, 8, 0,
                                 0, 0)
    with pytest.raises(ValueError, match="shares memory"):
        lib.quant_linear_forward(x.reshape(-1)[:8].reshape(2, 4), x, qw.qweight, qw.scale, qw.zero, None, 4, 16, 0, 0)


def test_wrapper_picks_the_kernel_and_refuses_the_backward(host_runtime):
    from scratchgpt.kernels.quant_linear import QuantLinear
    op = QuantLinear(host_runtime)
    assert op.gemv_max_rows == 8
    qw, x, bias = make(10, 32, 8, seed=9, lead=(2, 5))
    out, cache = op.forward(x, op.on_backend(qw), bias)
    want = x.reshape(-1, 32).astype(np.float64) @ ql.dequantize(qw).astype(np.float64).T + bias
    np.testing.assert_allclose(out.reshape(-1, 10), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(op.dequantize(qw), ql.dequantize(qw))
    with pytest.raises(NotImplementedError, match="inference-only"):
        op.backward(out, cache)
    with pytest.raises(TypeError, match="QuantizedWeight"):
        op.forward(x, np.zeros((10, 32), np.float32))
