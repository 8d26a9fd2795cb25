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
