"""csrc/attention.cu against reference/attention.py (float64): both versions (fused "flash" and
"materialized"), causal and banded, forward and backward, and the KV-cache decode; on the host
executor always and, marked `cuda`, on the GPU. Outputs are poisoned with NaN before each launch.
(The reference's own finite-difference tests: test_attention.py.)
"""
import time

import numpy as np
import pytest
from kernelutil import given, st   # hypothesis, or a skip where it is not installed

from scratchgpt.reference import attention as ref

VERSIONS = ("flash", "materialized")
HEAD_DIMS = [1, 3, 4, 5, 8, 31, 32, 33, 64, 65, 100, 128]   # odd, not multiples of 4 or 32, GPT's


def rel_err(got, want):
    got = np.asarray(got, np.float64)
    assert np.isfinite(got).all(), "NaN or inf in the kernel's output (an element not written?)"
    return np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)


def make_inputs(B, T, H, D, seed):
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((B, T, 3 * H * D)).astype(np.float32)
    qkv[..., :H * D] *= 2.0   # sharper softmax rows than unit scores
    dy = rng.standard_normal((B, T, H * D)).astype(np.float32)
    return qkv, dy


def reference_lse(qkv64, n_head, window):
    """log sum_j exp(S_tj) over the visible keys: [B, H, T]."""
    q, k, _ = ref.split_heads(qkv64, n_head)
    T, D = q.shape[2], q.shape[3]
    s = np.where(ref.allowed_mask(T, window), (q @ k.transpose(0, 1, 3, 2)) / np.sqrt(D), -np.inf)
    m = s.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(s - m).sum(axis=-1, keepdims=True)))[..., 0]


def run_kernels(rt, qkv, dy, n_head, window, version):
    """Forward and backward through the bound launchers, every output and scratch poisoned."""
    lib, dev = rt.lib, rt.asarray
    poisoned = lambda shape: dev(np.full(shape, np.nan, np.float32))   # noqa: E731
    B, T, C3 = qkv.shape
    C, w = C3 // 3, window or 0
    x, g = dev(qkv), dev(dy)
    y, dqkv = poisoned((B, T, C)), poisoned(qkv.shape)
    if version == "flash":
        lse, di = poisoned((B, n_head, T)), poisoned((B, n_head, T))
        lib.attention_forward(y, lse, x, n_head, w, rt.stream())
        lib.attention_backward(dqkv, di, g, x, y, lse, n_head, w, rt.stream())
        saved = lse
    else:
        probs, dprobs = poisoned((B, n_head, T, T)), poisoned((B, n_head, T, T))
        lib.attention_materialized_forward(y, probs, x, n_head, w, rt.stream())
        lib.attention_materialized_backward(dqkv, dprobs, g, x, probs, n_head, w, rt.stream())
        saved = probs
    return rt.asnumpy(y), rt.asnumpy(dqkv), rt.asnumpy(saved)


def check_against_reference(rt, B, T, H, D, window, version, seed=0, tol=1e-5):
    qkv, dy = make_inputs(B, T, H, D, seed)
    y, dqkv, saved = run_kernels(rt, qkv, dy, H, window, version)
    qkv64 = qkv.astype(np.float64)
    r_y, cache = ref.forward(qkv64, H, window)
    r_dqkv = ref.backward(dy.astype(np.float64), cache)
    assert rel_err(y, r_y) < tol
    assert rel_err(dqkv, r_dqkv) < tol
    if version == "flash":
        assert rel_err(saved, reference_lse(qkv64, H, window)) < tol
    else:
        assert rel_err(saved, cache[3]) < tol   # the probabilities, zeros outside the window


@pytest.mark.parametrize("version", VERSIONS)
@given(B=st.integers(1, 2), T=st.integers(1, 70), H=st.integers(1, 3), D=st.sampled_from(HEAD_DIMS),
       window=st.one_of(st.none(), st.integers(1, 80)), seed=st.integers(0, 2**16))
def test_matches_reference(kernel_runtime, version, B, T, H, D, window, seed):
    check_against_reference(kernel_runtime, B, T, H, D, window, version, seed)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("B, T, H, D, window", [
    (1, 1, 1, 8, None),      # one position
    (1, 1, 2, 3, 1),
    (2, 33, 1, 5, 1),        # window 1: each query sees itself only
    (1, 40, 2, 7, 40),       # window == T: plain causal
    (1, 40, 2, 7, 1000),     # window > T
    (1, 65, 1, 128, None),   # T not a multiple of the tile, the largest head
    (1, 96, 2, 64, 33),      # band across tile boundaries
    (2, 31, 12, 4, None),    # many heads
    (1, 50, 1, 37, 17),      # odd head dim
])
def test_edge_shapes(kernel_runtime, version, B, T, H, D, window):
    check_against_reference(kernel_runtime, B, T, H, D, window, version, seed=T + D)


def test_flash_and_materialized_agree(kernel_runtime):
    qkv, dy = make_inputs(2, 45, 3, 16, 7)
    y_f, d_f, _ = run_kernels(kernel_runtime, qkv, dy, 3, 11, "flash")
    y_m, d_m, _ = run_kernels(kernel_runtime, qkv, dy, 3, 11, "materialized")
    assert rel_err(y_f, y_m.astype(np.float64)) < 1e-6
    assert rel_err(d_f, d_m.astype(np.float64)) < 1e-6


@pytest.mark.parametrize("version", VERSIONS)
def test_backward_is_bit_reproducible(kernel_runtime, version):
    """No float atomics: two runs give identical gradients."""
    qkv, dy = make_inputs(1, 100, 2, 24, 3)
    first = run_kernels(kernel_runtime, qkv, dy, 2, None, version)
    second = run_kernels(kernel_runtime, qkv, dy, 2, None, version)
    for a, b in zip(first, second):
        assert np.array_equal(a, b)


def test_long_sequence_causal(kernel_runtime):
    """T = 1024 (32 key tiles per row of the last query tile) against the reference."""
    check_against_reference(kernel_runtime, 1, 1024, 1, 8, None, "flash", seed=1, tol=1e-4)


def check_banded_by_slices(rt, T, window, D, seed):
    """T too long for the reference's T x T: a banded row depends on `window` keys only, so the
    reference on slices of the sequence gives exact values for the rows inside each slice."""
    qkv, dy = make_inputs(1, T, 1, D, seed)
    y, dqkv, lse = run_kernels(rt, qkv, dy, 1, window, "flash")
    span = 8 * window
    for start in (0, T // 2 - span // 2, T - span):
        stop = start + span
        part = qkv[:, start:stop].astype(np.float64)
        r_y, cache = ref.forward(part, 1, window)
        r_dqkv = ref.backward(dy[:, start:stop].astype(np.float64), cache)
        first = 0 if start == 0 else window - 1          # rows whose window lies in the slice
        last_kv = span if stop == T else span - window + 1   # keys whose queries all lie in it
        rows = slice(start + first, stop)
        assert rel_err(y[:, rows], r_y[:, first:]) < 1e-5
        assert rel_err(lse[:, :, rows], reference_lse(part, 1, window)[:, :, first:]) < 1e-5
        assert rel_err(dqkv[:, rows, :D], r_dqkv[:, first:, :D]) < 1e-5
        kv_rows = slice(start + first, start + last_kv)
        assert rel_err(dqkv[:, kv_rows, D:], r_dqkv[:, first:last_kv, D:]) < 1e-5


def test_long_banded_sequence_is_linear(kernel_runtime):
    """T = 4096, window 64: only tiles inside the band are visited (memory and time O(T * w))."""
    started = time.perf_counter()
    check_banded_by_slices(kernel_runtime, 4096, 64, 8, seed=2)
    if kernel_runtime.backend == "host":   # ~1 s here; a T^2 implementation takes ~20 s
        assert time.perf_counter() - started < 15


@pytest.mark.slow
def test_very_long_causal_sequence(kernel_runtime):
    """T = 4096 causal with a small head (host executor: ~18 s) against the reference."""
    check_against_reference(kernel_runtime, 1, 4096, 1, 8, None, "flash", seed=4, tol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_gpt2_head_shapes(kernel_runtime, version):
    check_against_reference(kernel_runtime, 1, 256, 4, 64, None, version, seed=5)
    check_against_reference(kernel_runtime, 1, 256, 2, 128, 100, version, seed=6)


# ------------------------------------------------------------------------------------ decode
def check_decode(rt, B, H, Tn, S, D, window, seed, t0=None):
    rng = np.random.default_rng(seed)
    t0 = S - Tn if t0 is None else t0
    q = rng.standard_normal((B, H, Tn, D)).astype(np.float32)
    k = rng.standard_normal((B, H, S, D)).astype(np.float32)
    v = rng.standard_normal((B, H, S, D)).astype(np.float32)
    y = rt.asarray(np.full((B, Tn, H * D), np.nan, np.float32))
    rt.lib.attention_decode(y, rt.asarray(q), rt.asarray(k), rt.asarray(v), t0, window or 0, rt.stream())
    f64 = lambda a: a.astype(np.float64)   # noqa: E731
    want = ref.decode(f64(q), f64(k), f64(v), t0, window)
    assert rel_err(rt.asnumpy(y), want) < 1e-5


@given(B=st.integers(1, 2), H=st.integers(1, 3), Tn=st.integers(1, 4), past=st.integers(0, 80),
       D=st.sampled_from(HEAD_DIMS), window=st.one_of(st.none(), st.integers(1, 90)),
       seed=st.integers(0, 2**16))
def test_decode_matches_reference(kernel_runtime, B, H, Tn, past, D, window, seed):
    check_decode(kernel_runtime, B, H, Tn, past + Tn, D, window, seed)


@pytest.mark.parametrize("B, H, Tn, S, D, window, t0", [
    (1, 1, 1, 1, 8, None, None),     # the first token
    (2, 3, 1, 100, 64, None, None),  # one new token, a key chunk per warp
    (1, 2, 2, 300, 16, None, None),  # several chunks per warp
    (1, 1, 1, 300, 12, 40, None),    # banded: two of the four warps see no key
    (1, 2, 1, 100, 128, 7, None),    # banded
    (1, 1, 3, 50, 5, None, 20),      # cache longer than the queries need (keys past t masked)
])
def test_decode_edge_shapes(kernel_runtime, B, H, Tn, S, D, window, t0):
    check_decode(kernel_runtime, B, H, Tn, S, D, window, seed=S, t0=t0)


# ----------------------------------------------------------------------------- the wrapper
@pytest.mark.parametrize("version", VERSIONS)
def test_wrapper_matches_reference_interface(kernel_runtime, version):
    """REGISTRY["attention"]: forward(qkv, n_head, window) -> y, cache; backward(dy, cache) -> dqkv."""
    from scratchgpt.kernels import REGISTRY
    rt = kernel_runtime
    op = REGISTRY["attention"](rt, version=version)
    qkv, dy = make_inputs(2, 20, 2, 6, 9)
    y, cache = op.forward(rt.asarray(qkv), 2, window=5)
    dqkv = op.backward(rt.asarray(dy), cache)
    r_y, r_cache = ref.forward(qkv.astype(np.float64), 2, 5)
    assert rel_err(rt.asnumpy(y), r_y) < 1e-5
    assert rel_err(rt.asnumpy(dqkv), ref.backward(dy.astype(np.float64), r_cache)) < 1e-5
    assert cache[0] == version


def test_decode_takes_the_models_views(kernel_runtime):
    """The model hands a fresh cache over as strided views of the projection."""
    from scratchgpt.kernels import REGISTRY
    rt = kernel_runtime
    op = REGISTRY["attention"](rt)
    B, T, H, D = 2, 9, 3, 8
    qkv, _ = make_inputs(B, T, H, D, 11)
    parts = rt.asarray(qkv).reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)
    y = op.decode(rt.xp.ascontiguousarray(parts[0]), parts[1], parts[2], 0, None)
    r_y, _ = ref.forward(qkv.astype(np.float64), H)
    assert rel_err(rt.asnumpy(y), r_y) < 1e-5


def test_version_selection(host_runtime, monkeypatch):
    from scratchgpt.kernels.attention import Attention
    monkeypatch.delenv("SCRATCHGPT_ATTENTION", raising=False)
    assert Attention(host_runtime).version == "flash"
    monkeypatch.setenv("SCRATCHGPT_ATTENTION", "materialized")
    op = Attention(host_runtime)
    assert op.version == "materialized"
    qkv, _ = make_inputs(1, 5, 1, 4, 0)
    assert op.forward(qkv, 1)[1][0] == "materialized"
    assert op.forward(qkv, 1, version="flash")[1][0] == "flash"
    monkeypatch.setenv("SCRATCHGPT_ATTENTION", "fast")
    with pytest.raises(ValueError, match="SCRATCHGPT_ATTENTION"):
        Attention(host_runtime)
    with pytest.raises(ValueError, match="^version"):
        Attention(host_runtime, version="flash").forward(qkv, 1, version="naive")


def test_arguments_are_checked_by_name(host_runtime):
    from scratchgpt.kernels import REGISTRY
    op = REGISTRY["attention"](host_runtime)
    lib = host_runtime.lib
    qkv, dy = make_inputs(1, 6, 2, 4, 0)
    with pytest.raises(ValueError, match=r"^qkv: last axis 24 must be 3 \* n_head \* head_dim"):
        op.forward(qkv, 3)
    with pytest.raises(ValueError, match=r"^n_head: expected a positive integer"):
        op.forward(qkv, 0)
    with pytest.raises(TypeError, match=r"^qkv: the host backend stores float32, bfloat16 or float16, got float64"):
        op.forward(qkv.astype(np.float64), 2)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=r"^window: expected None or a positive integer"):
            op.forward(qkv, 2, window=bad)
    with pytest.raises(ValueError, match=r"^qkv: expected 3 dimensions"):
        op.forward(qkv[0], 2)
    with pytest.raises(ValueError, match=r"^qkv: head_dim 129 exceeds the supported 128"):
        op.forward(np.zeros((1, 2, 3 * 129), np.float32), 1)
    with pytest.raises(ValueError, match=r"^qkv: expected a C-contiguous array"):
        op.forward(np.zeros((1, 12, 24), np.float32)[:, ::2], 2)
    y, lse = np.empty((1, 6, 8), np.float32), np.empty((1, 2, 6), np.float32)
    with pytest.raises(ValueError, match=r"^lse: expected shape \(1, 2, 6\)"):
        lib.attention_forward(y, lse[:, :1], qkv, 2, 0)
    with pytest.raises(ValueError, match=r"^window: expected a positive integer"):
        lib.attention_forward(y, lse, qkv, 2, -1)
    with pytest.raises(TypeError, match=r"^qkv: expected float32, got int32"):
        lib.attention_forward(y, lse, qkv.astype(np.int32), 2, 0)
    with pytest.raises(ValueError, match=r"^probs: expected shape \(1, 2, 6, 6\)"):
        lib.attention_materialized_forward(y, np.empty((1, 2, 6, 5), np.float32), qkv, 2, 0)
    _, cache = op.forward(qkv, 2)
    with pytest.raises(ValueError, match=r"^dy: expected shape \(1, 6, 8\)"):
        op.backward(dy[:, :5], cache)
    with pytest.raises(ValueError, match=r"^y: overlaps qkv"):
        lib.attention_forward(qkv.reshape(-1)[:48].reshape(1, 6, 8), lse, qkv, 2, 0)
    dqkv, di = np.empty_like(qkv), np.empty((1, 2, 6), np.float32)
    with pytest.raises(ValueError, match=r"^dqkv: overlaps qkv"):
        lib.attention_backward(qkv, di, dy, qkv, y, lse, 2, 0)
    with pytest.raises(ValueError, match=r"^di: overlaps lse"):
        lib.attention_backward(dqkv, lse, dy, qkv, y, lse, 2, 0)
    q = np.zeros((1, 2, 1, 4), np.float32)
    kv = np.zeros((1, 2, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"^t0: queries at 3 .. 3 need their keys"):
        op.decode(q, kv, kv, 3)
    with pytest.raises(ValueError, match=r"^t0: expected a non-negative integer"):
        op.decode(q, kv, kv, -1)
    with pytest.raises(ValueError, match=r"^v_cache: expected the shape of k_cache \(1, 2, 3, 4\)"):
        op.decode(q, kv, kv[:, :, :2], 2)
    with pytest.raises(ValueError, match=r"^window: expected None or a positive integer"):
        op.decode(q, kv, kv, 2, window=0)


def test_misaligned_inputs_take_the_scalar_path(host_runtime):
    """D % 4 == 0 but qkv, dy and the cache start 4 bytes past a 16-byte boundary."""
    def shifted(a):
        buffer = np.zeros(a.size + 1, np.float32)
        out = buffer[1:].reshape(a.shape)
        out[...] = a
        assert out.ctypes.data % 16 != 0
        return out

    rt = host_runtime
    qkv, dy = make_inputs(1, 40, 2, 8, 12)
    y, dqkv, _ = run_kernels(rt, shifted(qkv), shifted(dy), 2, 9, "flash")
    r_y, cache = ref.forward(qkv.astype(np.float64), 2, 9)
    assert rel_err(y, r_y) < 1e-5
    assert rel_err(dqkv, ref.backward(dy.astype(np.float64), cache)) < 1e-5
    q = np.ascontiguousarray(ref.split_heads(qkv, 2)[0][:, :, -3:])
    k, v = (np.ascontiguousarray(a) for a in ref.split_heads(qkv, 2)[1:])
    got = attention_op(rt).decode(shifted(q), shifted(k), shifted(v), 37)
    want = ref.decode(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), 37)
    assert rel_err(got, want) < 1e-5


def attention_op(rt):
    from scratchgpt.kernels import REGISTRY
    return REGISTRY["attention"](rt)



@pytest.mark.slow
def test_flash_past_the_old_grid_limit(host_runtime):
    """The flash kernels had the query/key tiles on grid.y (at most 65535 tiles: T = 2,097,120).
    One position more, one head of width 1, window 1 (each query sees itself: y = v,
    lse = q k, dv = dy, dq = dk = 0), forward and backward. About 35 s on the host."""
    rt, lib = host_runtime, host_runtime.lib
    T = 65535 * 32 + 1
    qkv, dy = make_inputs(1, T, 1, 1, 41)
    q, k, v = qkv[0, :, 0], qkv[0, :, 1], qkv[0, :, 2]
    y, lse = np.full((1, T, 1), np.nan, np.float32), np.full((1, 1, T), np.nan, np.float32)
    lib.attention_forward(y, lse, qkv, 1, 1, rt.stream())
    np.testing.assert_array_equal(y[0, :, 0], v)
    np.testing.assert_allclose(lse[0, 0], q.astype(np.float64) * k, rtol=1e-6, atol=1e-6)
    dqkv, di = np.full_like(qkv, np.nan), np.full((1, 1, T), np.nan, np.float32)
    lib.attention_backward(dqkv, di, dy, qkv, y, lse, 1, 1, rt.stream())
    np.testing.assert_array_equal(di[0, 0], dy[0, :, 0] * v)
    np.testing.assert_allclose(dqkv[0, :, 2], dy[0, :, 0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dqkv[0, :, :2], 0.0, atol=1e-5)


# --------------------------------------------------------- bfloat16 / float16 storage (tensor cores)
# 16-bit qkv and dy: the flash kernels compute S = Q K^T, P V and the backward's products on tensor
# cores (head widths that are multiples of 8; others, and misaligned arrays, take the SIMT kernels,
# which widen to fp32 and round only their outputs). Each result is checked element by element
# against float64 on the same rounded inputs, within a bound derived from the roundings the kernel
# does (docs/gradients/attention.md, "bf16 / fp16 storage"):
#   storage: R(x) = x (1 + theta) + e with |theta| <= u, |e| <= eta: u = 2^-8 (bf16) or 2^-11
#            (fp16), eta = half the smallest subnormal (precision.UNIT_ROUNDOFF, UNDERFLOW_FLOOR);
#   fp32:    a chain of n additions is within gamma_n = n u' / (1 - n u') of the exact sum of the
#            terms' magnitudes, u' = 2^-23 (twice fp32's unit roundoff: a tensor-core sum may
#            truncate, in an unspecified order); __expf(x) is within 2 + 1.2 |x| ulp (the CUDA
#            programming guide's bound for the GPU; the host's expf is better).
import ml_dtypes  # noqa: E402

from scratchgpt.precision import UNDERFLOW_FLOOR, UNIT_ROUNDOFF  # noqa: E402

LOW = {"bf16": np.dtype(ml_dtypes.bfloat16), "fp16": np.dtype(np.float16)}
U32 = 2.0 ** -24


def gamma(n):
    return n * 2 * U32 / (1 - n * 2 * U32)


def f64(a):
    return np.asarray(a).astype(np.float64)


def exp_rel(x):
    """Relative error of the kernels' __expf(x) (one ulp is at most 2 u32 of the value)."""
    return (2 + 1.2 * np.abs(x)) * 2 * U32


def chain(T):
    """An upper bound on the fp32 additions behind any one accumulated value (keys or queries of a
    row, the rescalings between tiles, the reductions across lanes)."""
    return 2 * T + 200


def low_inputs(B, T, H, D, seed, precision):
    qkv, dy = make_inputs(B, T, H, D, seed)
    return qkv.astype(LOW[precision]), dy.astype(LOW[precision])


def softmax_parts(q, k, v, ok):
    """float64: the scaled scores, their fp32 error bound E, the row max, the probabilities, the
    log-sum-exp and P v for q [.., Tq, D], k, v [.., S, D] and the mask ok [Tq, S]."""
    D = q.shape[-1]
    scale = 1.0 / np.sqrt(D)
    s = (q @ np.swapaxes(k, -1, -2)) * scale
    # fp32 scores: a D-term dot product of exact products, times the fp32 scale (two roundings)
    E = gamma(D + 2) * scale * (np.abs(q) @ np.swapaxes(np.abs(k), -1, -2))
    sm = np.where(ok, s, -np.inf)
    m = sm.max(-1, keepdims=True)
    e = np.exp(sm - m)
    l = e.sum(-1, keepdims=True)
    P = e / l
    return dict(s=s, E=np.where(ok, E, 0.0), m=m[..., 0], P=P, lse=(m + np.log(l))[..., 0], y=P @ v,
                ok=ok, scale=scale)


def stored_bound(value, b, precision):
    """A value computed within b (fp32) and then rounded once to the storage type."""
    u, eta = UNIT_ROUNDOFF[precision], UNDERFLOW_FLOOR[precision]
    return u * (np.abs(value) + b) + b + eta


def forward_bound(x, v, precision, p_rounded, n):
    """Bounds on y (stored) and lse (fp32) of the online softmax. delta bounds |log(p/p_exact)| of
    each unnormalised probability (score error, exp, the subtraction of the row max); the
    normalised weights are then within exp(2 delta) of P (the max and any rescaling cancel between
    numerator and denominator). p_rounded: the tensor-core path rounds each p to T as the A operand
    of P V, so |dy_i| gains u sum_j P_ij |v_j| and eta sum_j |v_j| (l >= 1: the max term is 1)."""
    u, eta = UNIT_ROUNDOFF[precision], UNDERFLOW_FLOOR[precision]
    Emax = x["E"].max(-1)
    R = np.where(x["ok"], x["m"][..., None] - x["s"], 0.0).max(-1) + 2 * Emax
    delta = Emax + exp_rel(R) + U32 * R
    grow = np.exp(2 * delta) - 1
    Pv = x["P"] @ np.abs(v)
    b = (grow + gamma(n) * (1 + grow))[..., None] * Pv
    if p_rounded:
        b += u * (1 + grow)[..., None] * Pv + 1.01 * eta * (x["ok"] @ np.abs(v))
    y_bound = stored_bound(x["y"], b, precision)
    lse_bound = 2 * delta + gamma(n) + 8 * U32 * (np.abs(x["lse"]) + np.abs(x["m"]) + 1)
    return y_bound, lse_bound


def backward_bound(x, q, k, v, dY, p_err, d_err, precision, rounded, n):
    """Bounds on dq, dk, dv [B, H, T, D] (stored). The backward's P differs from the exact one by
    p_err, its D_i = rowsum(dy y) by d_err; dP = dY V^T is an fp32 dot product (F); dS = P (dP - D)
    rounds twice in fp32 (G collects it all). rounded: the tensor-core path rounds P and dS to T as
    operands of dV = P^T dY, dK = dS^T Q / sqrt(d), dQ = dS K / sqrt(d)."""
    u, eta = UNIT_ROUNDOFF[precision], UNDERFLOW_FLOOR[precision]
    ok, P, scale = x["ok"], x["P"], x["scale"]
    D = q.shape[-1]
    dP = dY @ np.swapaxes(v, -1, -2)
    Di = (dY * x["y"]).sum(-1, keepdims=True)
    dS = np.where(ok, P * (dP - Di), 0.0)
    F = gamma(D) * (np.abs(dY) @ np.swapaxes(np.abs(v), -1, -2))
    Hd = F + d_err[..., None]
    P_hat = P + p_err
    G = np.where(ok, p_err * np.abs(dP - Di) + P_hat * Hd + 2 * U32 * P_hat * (np.abs(dP - Di) + Hd), 0.0)
    eP, eS = p_err, G
    if rounded:
        eP = eP + np.where(ok, u * P_hat + eta, 0.0)
        eS = eS + np.where(ok, u * (np.abs(dS) + G) + eta, 0.0)
    g = gamma(n)
    tr = lambda a: np.swapaxes(a, -1, -2)   # noqa: E731
    dv = tr(P) @ dY
    b_dv = tr(eP) @ np.abs(dY) + g * (tr(P_hat + eP) @ np.abs(dY))
    dk = scale * (tr(dS) @ q)
    b_dk = scale * (tr(eS) @ np.abs(q) + g * (tr(np.abs(dS) + eS) @ np.abs(q)))
    b_dk += 2 * U32 * (np.abs(dk) + b_dk)
    dq = scale * (dS @ k)
    b_dq = scale * (eS @ np.abs(k) + g * ((np.abs(dS) + eS) @ np.abs(k)))
    b_dq += 2 * U32 * (np.abs(dq) + b_dq)
    return [(w, stored_bound(w, b, precision)) for w, b in ((dq, b_dq), (dk, b_dk), (dv, b_dv))]


def packed(parts):
    """Three [B, H, T, D] arrays as the [B, T, 3C] layout of qkv."""
    return np.concatenate([ref.merge_heads(p) for p in parts], axis=-1)


def assert_within(got, want, bound, what, min_ratio=None):
    """|got - want| <= bound everywhere (NaN never passes); min_ratio: the bound is not vacuous."""
    got = np.asarray(got).astype(np.float64)
    assert np.isfinite(got).all(), f"{what}: NaN or inf in the kernel's output (an element not written?)"
    err = np.abs(got - want)
    ratio = err / bound
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    assert ratio.max() <= 1.0, (f"{what}: |error| {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} "
                                f"(exact {want[worst]:.6g}, kernel {got[worst]:.6g})")
    if min_ratio is not None:
        assert ratio.max() >= min_ratio, f"{what}: error at most {ratio.max():.3f} of the bound"
    return float(ratio.max())


def run_low(rt, qkv, dy, H, window, version="flash", shift=False):
    """Forward and backward on 16-bit storage through the launchers; every output poisoned (NaN).
    shift: every array starts 2 bytes past a 16-byte boundary (the SIMT fallback)."""
    lib, S = rt.lib, qkv.dtype
    B, T, C3 = qkv.shape
    C, w = C3 // 3, window or 0

    def dev(a):
        if not shift:
            return rt.asarray(a)
        flat = rt.asarray(np.zeros(a.size + 8, a.dtype))
        out = flat[1:a.size + 1].reshape(a.shape)
        out[...] = rt.asarray(a)
        return out

    nan = lambda shape, dtype=S: dev(np.full(shape, np.nan, np.float32).astype(dtype))   # noqa: E731
    x, g = dev(qkv), dev(dy)
    y, dqkv = nan((B, T, C)), nan(qkv.shape)
    b = rt.bits
    if version == "flash":
        lse, di = nan((B, H, T), np.float32), nan((B, H, T), np.float32)
        lib.attention_forward(b(y), lse, b(x), H, w, rt.stream())
        lib.attention_backward(b(dqkv), di, b(g), b(x), b(y), lse, H, w, rt.stream())
        saved = lse
    else:
        probs, dprobs = nan((B, H, T, T), np.float32), nan((B, H, T, T), np.float32)
        lib.attention_materialized_forward(b(y), probs, b(x), H, w, rt.stream())
        lib.attention_materialized_backward(b(dqkv), dprobs, b(g), b(x), probs, H, w, rt.stream())
        saved = probs
    out = [rt.asnumpy(a) for a in (y, dqkv, saved)]
    assert out[0].dtype == S and out[1].dtype == S
    return out


def to_storage(a, precision):
    """float64 values rounded as the kernel rounds an fp32 value to T (a float64 -> float32 step
    first: the callers widen their intervals by 2^-23 to cover it)."""
    return np.asarray(a, np.float64).astype(np.float32).astype(LOW[precision]).astype(np.float64)


def check_rounding_model(x, v, y_got, precision, tile=64):
    """The tensor-core forward's roundings, replayed: y = R(sum_j R(p_j) A_j v_j / sum_j p_j A_j)
    with p_j = exp(s_j - m_t) at the running max m_t after key j's 64-key tile and A_j =
    exp(m_t - m) the rescalings after it. The fp32 arithmetic moves p_j by at most eps_j
    (relative), so R(p_j) lies between R(p_j (1 - eps_j)) and R(p_j (1 + eps_j)); carrying these
    intervals and the fp32 sums' errors through gives an interval for y before its rounding,
    and R is monotone: the kernel's y must lie in [R(lo), R(hi)]. Where the interval holds one
    value of T (most elements) the kernel must match it bit for bit, so a rounding the kernel
    states (P to T) that is missing, or one it does not state (e.g. O stored in T between tiles),
    fails here even where the worst-case bound above has room for it. Returns that share."""
    ok, s, E = x["ok"], x["s"], x["E"]
    T = s.shape[-1]
    nt = -(-T // tile)
    pad = np.full(s.shape[:-1] + (nt * tile,), -np.inf)
    pad[..., :T] = np.where(ok, s, -np.inf)
    running = np.maximum.accumulate(pad.reshape(s.shape[:-1] + (nt, tile)).max(-1), axis=-1)
    m_t = np.repeat(running, tile, axis=-1)[..., :T]            # the running max at key j's tile
    m = x["m"][..., None]
    Em = E.max(-1, keepdims=True)                               # the fp32 max's own error
    X = np.where(ok, s - m_t, 0.0)                              # <= 0
    # p_j's exponent is off by E_j + Em (scores, max) and u32 |X| (the subtraction); __expf
    eps = np.expm1(E + Em + U32 * (np.abs(X) + E + Em)) + 1.01 * exp_rel(np.abs(X) + E + Em)
    p = np.where(ok, np.exp(X), 0.0)
    A = np.where(ok, np.exp(m_t - m), 0.0)
    widen = 2.0 ** -23
    r_mid = to_storage(p, precision)
    r_lo = to_storage(p * (1 - eps) * (1 - widen), precision)
    r_hi = to_storage(p * (1 + eps) * (1 + widen), precision)
    # A_j: the product of the rescalings exp(m_old - m_new) of the tiles after key j's: their
    # exponents telescope to m_t - m (off by 2 Em), each __expf and product rounds on its own
    later = nt - 1 - np.arange(T) // tile
    eps_A = np.where(ok, np.expm1(2 * Em + later * (exp_rel(np.abs(np.where(ok, m - m_t, 0.0)) + 2 * Em)
                                                    + 2 * U32)), 0.0)
    g = gamma(chain(T))
    w_hi = r_hi * A * (1 + eps_A)
    num = (r_mid * A) @ v
    num_err = (np.maximum(r_hi - r_mid, r_mid - r_lo) * A + r_hi * A * eps_A) @ np.abs(v) + g * (w_hi @ np.abs(v))
    den = (p * A).sum(-1, keepdims=True)                        # = sum_j exp(s_j - m)
    den_err = (p * A * (np.expm1(np.log1p(eps) + np.log1p(eps_A)) + g * (1 + eps) * (1 + eps_A))).sum(-1, keepdims=True)
    y_mid = num / den
    tau = (num_err + np.abs(y_mid) * den_err) / (den - den_err) + 2 * U32 * (np.abs(y_mid) + 1e-300)
    lo = to_storage(y_mid - tau - widen * np.abs(y_mid), precision)
    hi = to_storage(y_mid + tau + widen * np.abs(y_mid), precision)
    inside = (lo <= y_got) & (y_got <= hi)
    worst = np.unravel_index(int(np.argmin(inside)), inside.shape)
    assert inside.all(), (f"y outside the rounding model at {worst}: kernel {y_got[worst]:.8g}, "
                          f"model [{lo[worst]:.8g}, {hi[worst]:.8g}] around {y_mid[worst]:.8g}")
    return float(np.mean(lo == hi))


def check_low(rt, B, T, H, D, window, precision, version="flash", seed=0, shift=False):
    """Forward (y, lse or probs) and backward (dqkv) against float64 within the derived bounds.
    Returns the largest error / bound ratios."""
    qkv, dy = low_inputs(B, T, H, D, seed, precision)
    y, dqkv, saved = run_low(rt, qkv, dy, H, window, version, shift)
    q, k, v = ref.split_heads(f64(qkv), H)
    dY = ref.split_heads(np.concatenate([f64(dy)] * 3, axis=-1), H)[0]
    x = softmax_parts(q, k, v, ref.allowed_mask(T, window))
    tc = version == "flash" and D % 8 == 0 and not shift   # the tensor-core path
    n = chain(T)
    ratios = {}
    y_got = ref.split_heads(np.concatenate([f64(y)] * 3, axis=-1), H)[0]
    if version == "flash":
        y_bound, lse_bound = forward_bound(x, v, precision, tc, n)
        ratios["y"] = assert_within(y_got, x["y"], y_bound, "y")
        ratios["lse"] = assert_within(saved, x["lse"], lse_bound, "lse")
        if tc:
            ratios["pinned"] = check_rounding_model(x, v, y_got, precision)
        # the backward's P from the saved lse: score error, lse's error, exp, the subtraction
        d_lse = np.abs(f64(saved) - x["lse"])[..., None]
        X = np.abs(x["s"] - x["lse"][..., None])
        pi = x["E"] + d_lse + exp_rel(X + x["E"] + d_lse) + U32 * X
        p_err = np.where(x["ok"], np.expm1(pi) * x["P"], 0.0)
        # D_i = rowsum(dy y) in fp32 from the kernel's stored y
        d_err = (np.abs(dY) * np.abs(y_got - x["y"])).sum(-1) + gamma(D + 8) * (np.abs(dY) * np.abs(y_got)).sum(-1)
    else:
        probs = f64(saved)
        delta = x["E"].max(-1) + exp_rel(np.where(x["ok"], x["m"][..., None] - x["s"], 0).max(-1)
                                         + 2 * x["E"].max(-1))
        p_bound = np.expm1(2 * delta + gamma(n) + 4 * U32)[..., None] * x["P"]
        ratios["probs"] = assert_within(probs, x["P"], np.maximum(p_bound, 1e-300), "probs")
        p_err = np.abs(probs - x["P"])              # the saved probabilities, as the rest reads them
        b = p_err @ np.abs(v) + gamma(n) * (probs @ np.abs(v))
        ratios["y"] = assert_within(y_got, x["y"], stored_bound(x["y"], b, precision), "y")
        # D_i = rowsum(dP P) over the saved probabilities
        dP = dY @ np.swapaxes(v, -1, -2)
        F = gamma(D) * (np.abs(dY) @ np.swapaxes(np.abs(v), -1, -2))
        d_err = ((F * probs + np.abs(dP) * p_err) + gamma(n) * (np.abs(dP) + F) * probs).sum(-1)
    parts = backward_bound(x, q, k, v, dY, p_err, d_err, precision, tc, n)
    got = ref.split_heads(f64(dqkv), H)
    for name, g, (want, bound) in zip(("dq", "dk", "dv"), got, parts):
        ratios[name] = assert_within(g, want, bound, name)
    return ratios


LOW_SHAPES = [   # B, T, H, D, window
    (1, 80, 2, 32, None),    # T past one 64-row tile
    (2, 70, 2, 64, 17),      # GPT-2's head width, a band inside and across tiles
    (1, 1, 2, 64, None),     # one position
    (1, 130, 1, 64, 70),     # three tiles, the band skips the first key tile of the last
    (2, 33, 3, 16, None),    # D = 16 in the 32-wide instantiation
    (1, 48, 2, 80, 20),      # D = 80 in the 128-wide one (k-steps and n-tiles past D skipped)
    (1, 40, 1, 128, None),   # the widest head
    (2, 200, 3, 64, None),   # four query tiles, heads and batches in one grid
    (1, 256, 2, 128, 100),   # the widest head, banded across four tiles
    (1, 65, 2, 8, 1),        # window 1: P = I, dq = dk = 0
    (1, 50, 2, 20, None),    # D % 8 != 0: the SIMT kernels
]


@pytest.mark.parametrize("precision", list(LOW))
@pytest.mark.parametrize("B, T, H, D, window", LOW_SHAPES)
def test_low_precision_flash(kernel_runtime, precision, B, T, H, D, window):
    ratios = check_low(kernel_runtime, B, T, H, D, window, precision, seed=T + D)
    if T > 1 and window != 1:   # y = v exactly otherwise
        assert ratios["y"] > 0.1   # the storage rounding shows: the bound is not vacuous


@pytest.mark.slow
@pytest.mark.parametrize("precision", list(LOW))
def test_low_precision_long_causal(kernel_runtime, precision):
    """T = 1024: 16 key tiles for the last query tile (the online softmax rescales 15 times)."""
    check_low(kernel_runtime, 1, 1024, 1, 64, None, precision, seed=3)


@pytest.mark.parametrize("precision", list(LOW))
@given(B=st.integers(1, 2), T=st.integers(1, 80), H=st.integers(1, 2),
       D=st.sampled_from([8, 16, 24, 32, 40, 64, 72, 96, 128, 12, 20]),
       window=st.one_of(st.none(), st.integers(1, 90)), seed=st.integers(0, 2**16))
def test_low_precision_flash_shapes(kernel_runtime, precision, B, T, H, D, window, seed):
    check_low(kernel_runtime, B, T, H, D, window, precision, seed=seed)


@pytest.mark.parametrize("precision", list(LOW))
@pytest.mark.parametrize("B, T, H, D, window", [(1, 40, 2, 32, None), (2, 21, 2, 12, 5), (1, 1, 1, 64, None)])
def test_low_precision_materialized(kernel_runtime, precision, B, T, H, D, window):
    check_low(kernel_runtime, B, T, H, D, window, precision, version="materialized", seed=T)


@pytest.mark.parametrize("precision", list(LOW))
def test_low_precision_misaligned_takes_simt(host_runtime, precision):
    """D % 8 == 0, but every array 2 bytes off a 16-byte boundary: the SIMT kernels, exact bound
    without the operand roundings."""
    check_low(host_runtime, 1, 40, 2, 32, 9, precision, seed=5, shift=True)


@pytest.mark.parametrize("schedule", ["reverse", "random:11"])
def test_low_precision_schedules_poison_and_determinism(host_runtime, monkeypatch, schedule):
    """The tensor-core kernels under another thread order, with shared memory poisoned at every
    block start: the same bits as the default order (no race, no unwritten shared memory read, no
    atomics), twice."""
    qkv, dy = low_inputs(1, 100, 2, 32, 13, "bf16")
    first = run_low(host_runtime, qkv, dy, 2, 40)
    monkeypatch.setenv("SCRATCH_HOST_SCHEDULE", schedule)
    monkeypatch.setenv("SCRATCH_HOST_POISON", "1")
    for _ in range(2):
        again = run_low(host_runtime, qkv, dy, 2, 40)
        for a, b in zip(first, again):
            assert np.array_equal(a.view(np.uint16) if a.dtype.itemsize == 2 else a,
                                  b.view(np.uint16) if b.dtype.itemsize == 2 else b)


def check_low_decode(rt, B, H, Tn, S, D, window, precision, seed, t0=None):
    rng = np.random.default_rng(seed)
    t0 = S - Tn if t0 is None else t0
    dt = LOW[precision]
    q = (2 * rng.standard_normal((B, H, Tn, D))).astype(np.float32).astype(dt)
    k = rng.standard_normal((B, H, S, D)).astype(np.float32).astype(dt)
    v = rng.standard_normal((B, H, S, D)).astype(np.float32).astype(dt)
    y = rt.asarray(np.full((B, Tn, H * D), np.nan, np.float32).astype(dt))
    b = rt.bits
    rt.lib.attention_decode(b(y), b(rt.asarray(q)), b(rt.asarray(k)), b(rt.asarray(v)), t0, window or 0,
                            rt.stream())
    got = rt.asnumpy(y)
    assert got.dtype == dt
    x = softmax_parts(f64(q), f64(k), f64(v), ref.allowed_mask(Tn, window, t0=t0, S=S))
    y_bound, _ = forward_bound(x, f64(v), precision, False, chain(S))
    got = f64(got).reshape(B, Tn, H, D).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(x["y"], ref.decode(f64(q), f64(k), f64(v), t0, window)
                               .reshape(B, Tn, H, D).transpose(0, 2, 1, 3), rtol=1e-12, atol=1e-15)
    return assert_within(got, x["y"], y_bound, "decode y")


@pytest.mark.parametrize("precision", list(LOW))
@pytest.mark.parametrize("B, H, Tn, S, D, window, t0", [
    (1, 1, 1, 1, 8, None, None),     # the first token
    (2, 3, 1, 100, 64, None, None),  # a key chunk per warp
    (1, 2, 2, 300, 32, None, None),  # several chunks per warp
    (1, 1, 1, 300, 12, 40, None),    # banded: two of the four warps see no key
    (1, 1, 3, 50, 20, None, 20),     # cache longer than the queries need
])
def test_low_precision_decode(kernel_runtime, precision, B, H, Tn, S, D, window, t0):
    check_low_decode(kernel_runtime, B, H, Tn, S, D, window, precision, seed=S + D, t0=t0)


@pytest.mark.parametrize("precision", list(LOW))
def test_low_precision_wrapper(kernel_runtime, precision):
    """REGISTRY["attention"] on 16-bit arrays: y and dqkv in that type, lse float32; decode too."""
    from scratchgpt.kernels import REGISTRY
    rt, dt = kernel_runtime, LOW[precision]
    qkv, dy = low_inputs(2, 20, 2, 16, 9, precision)
    for version in VERSIONS:
        op = REGISTRY["attention"](rt, version=version)
        y, cache = op.forward(rt.asarray(qkv), 2, window=5)
        dqkv = op.backward(rt.asarray(dy), cache)
        assert y.dtype == dt and dqkv.dtype == dt
        if version == "flash":
            assert cache[3].dtype == np.float32
        r_y, r_cache = ref.forward(f64(qkv), 2, 5)
        # |error| / |y| is u (storage) plus the operand roundings: within 4 u in norm
        assert rel_err(f64(rt.asnumpy(y)), r_y) < 4 * UNIT_ROUNDOFF[precision]
        assert rel_err(f64(rt.asnumpy(dqkv)), ref.backward(f64(dy), r_cache)) < 8 * UNIT_ROUNDOFF[precision]
    parts = rt.asarray(qkv).reshape(2, 20, 3, 2, 16).transpose(2, 0, 3, 1, 4)
    got = REGISTRY["attention"](rt).decode(rt.xp.ascontiguousarray(parts[0]), parts[1], parts[2], 0, 5)
    assert got.dtype == dt
    r_y, _ = ref.forward(f64(qkv), 2, 5)
    assert rel_err(f64(rt.asnumpy(got)), r_y) < 2 * UNIT_ROUNDOFF[precision]


def test_low_precision_dtype_mixes_are_named(host_runtime):
    from scratchgpt.kernels import REGISTRY
    rt, lib = host_runtime, host_runtime.lib
    bf, f16 = LOW["bf16"], LOW["fp16"]
    qkv, dy = low_inputs(1, 6, 2, 8, 0, "bf16")
    qb = qkv.view(np.uint16)
    y, lse = np.empty((1, 6, 16), bf).view(np.uint16), np.empty((1, 2, 6), np.float32)
    with pytest.raises(TypeError, match=r"^y: expected bfloat16 \(its uint16 bits\) like qkv, got float16"):
        lib.attention_forward(np.empty((1, 6, 16), f16), lse, qb, 2, 0)
    with pytest.raises(TypeError, match=r"^y: expected float16 like qkv, got float32"):
        lib.attention_forward(np.empty((1, 6, 16), np.float32), lse, qkv.astype(f16), 2, 0)
    with pytest.raises(TypeError, match=r"^lse: expected float32, got uint16"):
        lib.attention_forward(y, lse.astype(bf).view(np.uint16), qb, 2, 0)
    lib.attention_forward(y, lse, qb, 2, 0)
    dqkv, di = np.empty_like(qb), np.empty((1, 2, 6), np.float32)
    with pytest.raises(TypeError, match=r"^dy: expected bfloat16 \(its uint16 bits\) like qkv, got float32"):
        lib.attention_backward(dqkv, di, dy.astype(np.float32), qb, y, lse, 2, 0)
    with pytest.raises(TypeError, match=r"^dqkv: expected bfloat16 \(its uint16 bits\) like qkv, got float16"):
        lib.attention_backward(dqkv.view(f16), di, dy.view(np.uint16), qb, y, lse, 2, 0)
    with pytest.raises(TypeError, match=r"^probs: expected float32, got uint16"):
        lib.attention_materialized_forward(y, np.empty((1, 2, 6, 6), np.uint16), qb, 2, 0)
    with pytest.raises(TypeError, match=r"^qkv: expected float32, got int32"):
        lib.attention_forward(y, lse, np.zeros((1, 6, 48), np.int32), 2, 0)
    q = np.zeros((1, 2, 1, 8), f16)
    kv = np.zeros((1, 2, 3, 8), f16)
    with pytest.raises(TypeError, match=r"^v_cache: expected float16 like q, got uint16"):
        lib.attention_decode(np.empty((1, 1, 16), f16), q, kv, kv.astype(bf).view(np.uint16), 2, 0)
    # the wrapper names the argument before the bits lose the type
    op = REGISTRY["attention"](rt)
    _, cache = op.forward(qkv, 2)
    with pytest.raises(TypeError, match=r"^dy: expected bfloat16 like qkv, got float16"):
        op.backward(dy.astype(f16), cache)
    with pytest.raises(TypeError, match=r"^k_cache: expected float16 like q, got bfloat16"):
        op.decode(q, kv.astype(bf), kv, 2)


def test_low_precision_bench_rows(host_runtime):
    """benchmarks/kernels.py's bf16 attention rows: the cases time the 16-bit op through the
    table's runner, the check compares it with the reference, and the summary's ratio is SDPA's
    time over ours against the 70 % goal."""
    import warnings

    from scratchgpt.benchmarks import kernels
    from scratchgpt.ops import get_backend
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        be = get_backend("host")
    cases = kernels.attention_low_cases(2, 64, 64, 2, lengths=(128,))
    assert [(c.op, c.pass_, c.shape["B"], c.shape["T"]) for c in cases] == [
        ("attention", "forward", 2, 64), ("attention", "backward", 2, 64),
        ("attention", "forward", 1, 128), ("attention", "backward", 1, 128)]
    assert cases[0].spec.inputs(np, cases[0].shape, 0)["qkv"].dtype == LOW["bf16"]
    err = kernels.check_attention_low(be, dict(B=1, T=70, C=64, H=2))
    assert UNIT_ROUNDOFF["bf16"] / 16 < err < 1e-2   # bf16's rounding shows, within DESIGN's 1e-2
    calls = []
    records = kernels.run_table(cases[:2], be, lambda fn: calls.append(fn()) or [2.0], {
        "copy_gbps": 1.0, "sgemm_tflops": 1.0}, progress=False)
    assert [r["ms"] for r in records] == [2.0, 2.0] and len(calls) == 2
    for r in records:   # run_table's own check against the reference, on the 16-bit op
        assert UNIT_ROUNDOFF["bf16"] / 16 < r["check_rel_err"] < 1e-2
    y = calls[0]
    assert y.dtype == LOW["bf16"] and np.isfinite(f64(y)).all()
    records[0]["torch_ms"], records[1]["torch_ms"] = 1.0, 2.0
    (line,) = kernels.attention_low_summary(records, {"bf16_gemm_tflops": 1.0})
    assert "4.000 ms, SDPA 3.000 ms: 75% of SDPA's speed (goal >= 70%)" in line
    records[1]["torch_ms"] = 1.0
    assert kernels.attention_low_summary(records)[0].endswith("50% of SDPA's speed (goal >= 70%, missed)")
    assert records[0]["pct_of_bf16_gemm"] == pytest.approx(100 * records[0]["tflops"])
