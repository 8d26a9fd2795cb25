"""csrc/layernorm.cu against reference/layernorm.py (float64), on the host executor always and,
marked `cuda`, on the GPU. Outputs are poisoned with NaN before each launch, so an element the
kernel forgets to write fails. (The reference's own finite-difference tests: test_layernorm.py.)
bfloat16 / float16 storage: against float64 on the same T-rounded inputs, element by element,
within the bounds derived in storage_exact.
"""
import warnings

import numpy as np
import pytest
from kernelutil import given, st   # hypothesis, or a skip where it is not installed

from kernelutil import assert_sum_close, rel_err
from kernelutil import U32, assert_within, device_shifted, f64, gamma, poisoned, storage
from scratchgpt.reference import layernorm as ref

# C: not a multiple of 4 or 32, exactly 4 / 32 / 128, GPT widths, the largest
WIDTHS = [1, 3, 4, 5, 31, 32, 33, 100, 128, 130, 257, 768, 1023]


def make_inputs(shape, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3 + 1.5).astype(np.float32)    # offset: mean matters
    C = shape[-1]
    weight = rng.standard_normal(C).astype(np.float32)
    bias = rng.standard_normal(C).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    return x, weight, bias, dout


def run_kernels(rt, x, weight, bias, dout, eps=1e-5):
    """Launch forward and backward through the bound launchers with NaN-poisoned outputs."""
    lib, dev = rt.lib, rt.asarray
    rows = x.size // x.shape[-1]
    poisoned = lambda shape: dev(np.full(shape, np.nan, np.float32))   # noqa: E731
    out, mean, rstd = poisoned(x.shape), poisoned(x.shape[:-1] + (1,)), poisoned(x.shape[:-1] + (1,))
    xd, wd, bd = dev(x), dev(weight), dev(bias)
    lib.layernorm_forward(out, mean, rstd, xd, wd, bd, eps, rt.stream())
    dx, dweight, dbias = poisoned(x.shape), poisoned(weight.shape), poisoned(weight.shape)
    workspace = poisoned((lib.layernorm_backward_workspace(rows, x.shape[-1]),))
    lib.layernorm_backward(dx, dweight, dbias, workspace, dev(dout), xd, wd, mean, rstd, rt.stream())
    return [rt.asnumpy(a) for a in (out, mean, rstd, dx, dweight, dbias)]


def check_against_reference(rt, x, weight, bias, dout, tol=1e-5):
    out, mean, rstd, dx, dweight, dbias = run_kernels(rt, x, weight, bias, dout)
    f64 = lambda a: a.astype(np.float64)   # noqa: E731
    r_out, cache = ref.forward(f64(x), f64(weight), f64(bias))
    r_dx, r_dweight, r_dbias = ref.backward(f64(dout), cache)
    assert rel_err(mean, cache[1]) < tol
    assert rel_err(rstd, cache[2]) < tol
    # out, dx and the parameter gradients come from float32 sums (over C, over rows): where
    # their terms cancel, the error is bounded by the terms' magnitudes, not by the result
    xhat = (f64(x) - cache[1]) * cache[2]
    assert_sum_close(out, r_out, np.abs(xhat * f64(weight)) + np.abs(f64(bias)), x.shape[-1], tol)
    g = f64(dout) * f64(weight)
    C = x.shape[-1]
    dx_abs = cache[2] * (np.abs(g) + np.abs(g).mean(-1, keepdims=True)
                         + np.abs(xhat) * np.abs(g * xhat).mean(-1, keepdims=True))
    assert_sum_close(dx, r_dx, dx_abs, C, tol)
    long = 10 * tol if x.size // C > 256 else tol
    rows = lambda a: a.reshape(-1, C)   # noqa: E731
    assert_sum_close(dweight, r_dweight, rows(np.abs(f64(dout) * xhat)).sum(0), x.size // C, long)
    assert_sum_close(dbias, r_dbias, rows(np.abs(f64(dout))).sum(0), x.size // C, long)


@given(lead=st.lists(st.integers(1, 6), min_size=0, max_size=2), rows=st.integers(1, 40),
       C=st.sampled_from(WIDTHS), seed=st.integers(0, 2**16))
def test_matches_reference(kernel_runtime, lead, rows, C, seed):
    shape = tuple(lead) + (rows, C)
    check_against_reference(kernel_runtime, *make_inputs(shape, seed))


@pytest.mark.parametrize("shape", [(1, 1), (1, 8192), (3, 8192), (2, 7, 4099), (300, 96)])
def test_edge_shapes(kernel_runtime, shape):
    """One row, one column, the widest rows (C up to 8192, and 8192 + 3), many rows."""
    check_against_reference(kernel_runtime, *make_inputs(shape, sum(shape)))


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(4096, 768), (1024, 8192)])
def test_large(kernel_runtime, shape):
    check_against_reference(kernel_runtime, *make_inputs(shape, 0), tol=1e-5)


def test_misaligned_rows_take_the_scalar_path(kernel_runtime):
    """C % 4 == 0 but x starts 4 bytes past a 16-byte boundary: the float4 path may not run."""
    rt = kernel_runtime
    x, weight, bias, dout = make_inputs((5, 64), 3)
    buffer = np.zeros(x.size + 1, np.float32)
    shifted = buffer[1:].reshape(x.shape)
    shifted[...] = x
    if rt.backend == "host":
        assert shifted.ctypes.data % 16 != 0
        check_against_reference(rt, shifted, weight, bias, dout)
    else:   # device arrays are aligned by the allocator: shift there
        dev = rt.xp.zeros(x.size + 1, np.float32)
        dev[1:] = rt.asarray(x.reshape(-1))
        xd = dev[1:].reshape(x.shape)
        out = rt.xp.full(x.shape, np.nan, np.float32)
        stats = [rt.xp.full((5, 1), np.nan, np.float32) for _ in range(2)]
        rt.lib.layernorm_forward(out, *stats, xd, rt.asarray(weight), rt.asarray(bias), 1e-5, rt.stream())
        r_out, _ = ref.forward(x.astype(np.float64), weight.astype(np.float64), bias.astype(np.float64))
        assert rel_err(rt.asnumpy(out), r_out) < 1e-5


def test_wrapper_matches_reference_interface(kernel_runtime):
    """kernels.layernorm.LayerNorm: forward(x, w, b, eps) -> out, cache; backward(dout, cache)."""
    from scratchgpt.kernels import REGISTRY
    rt = kernel_runtime
    op = REGISTRY["layernorm"](rt)
    x, weight, bias, dout = make_inputs((2, 3, 40), 5)
    out, cache = op.forward(rt.asarray(x), rt.asarray(weight), rt.asarray(bias), eps=1e-3)
    dx, dweight, dbias = op.backward(rt.asarray(dout), cache)
    f64 = lambda a: a.astype(np.float64)   # noqa: E731
    r_out, r_cache = ref.forward(f64(x), f64(weight), f64(bias), eps=1e-3)
    r_grads = ref.backward(f64(dout), r_cache)
    assert cache[1].shape == r_cache[1].shape and cache[2].shape == r_cache[2].shape
    assert rel_err(rt.asnumpy(out), r_out) < 1e-5
    for got, want in zip((dx, dweight, dbias), r_grads):
        assert rel_err(rt.asnumpy(got), want) < 1e-5


def test_arguments_are_checked_by_name(host_runtime):
    from scratchgpt.kernels import REGISTRY
    op = REGISTRY["layernorm"](host_runtime)
    lib = host_runtime.lib
    x, weight, bias, _ = make_inputs((4, 8), 0)
    with pytest.raises(TypeError, match=r"^x: the host backend stores float32, bfloat16 or float16, got float64"):
        op.forward(x.astype(np.float64), weight, bias)
    with pytest.raises(ValueError, match=r"^weight: expected shape \(8,\), got \(7,\)"):
        op.forward(x, weight[:7], bias)
    with pytest.raises(ValueError, match=r"^x: expected a C-contiguous array"):
        op.forward(np.zeros((8, 4), np.float32).T, weight, bias)
    with pytest.raises(ValueError, match=r"^mean: expected 4 elements"):
        lib.layernorm_forward(np.empty_like(x), np.empty(3, np.float32), np.empty(4, np.float32),
                              x, weight, bias, 1e-5)
    with pytest.raises(TypeError, match=r"^x: expected float32, bfloat16 \(uint16 bits\) or float16, got int32"):
        lib.layernorm_forward(np.empty((4, 8), np.float32), np.empty(4, np.float32),
                              np.empty(4, np.float32), x.astype(np.int32), weight, bias, 1e-5)
    with pytest.raises(ValueError, match=r"^x: the last dimension \(C\) must be > 0"):
        op.forward(np.zeros((4, 0), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32))


def test_torch_tensors_are_accepted(host_runtime):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    from scratchgpt.kernels import REGISTRY
    op = REGISTRY["layernorm"](host_runtime)
    x, weight, bias, _ = make_inputs((3, 24), 2)
    out, _ = op.forward(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias))
    r_out, _ = ref.forward(x.astype(np.float64), weight.astype(np.float64), bias.astype(np.float64))
    assert rel_err(out, r_out) < 1e-5


def test_host_backend_lists_its_fallbacks_once(monkeypatch):
    """An op without a kernel runs on the reference, named once in a warning and in fallbacks."""
    from scratchgpt import kernels
    from scratchgpt.kernels import KernelFallbackWarning
    from scratchgpt.ops import get_backend
    from scratchgpt.reference import gelu
    monkeypatch.delitem(kernels.REGISTRY, "gelu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = get_backend("host")
    fallback_warnings = [w for w in caught if issubclass(w.category, KernelFallbackWarning)]
    assert len(fallback_warnings) == 1 and "gelu" in str(fallback_warnings[0].message)
    assert backend.fallbacks == ["gelu"]
    assert backend.gelu is gelu
    assert type(backend.layernorm).__name__ == "LayerNorm"


def test_cuda_backend_says_why_it_is_unavailable():
    from scratchgpt.kernels import backend_status
    from scratchgpt.ops import get_backend
    status = backend_status("cuda")
    if status["available"]:
        pytest.skip("a GPU is present: nothing to explain")
    with pytest.raises(RuntimeError, match="backend 'cuda' is unavailable: .+"):
        get_backend("cuda")
    assert status["reason"]


def test_info_reports_every_backend():
    from scratchgpt.info import backends_info
    info = backends_info()["backends"]
    assert info["numpy"]["available"] is True
    assert info["host"]["available"] is True and info["host"]["threads"] >= 1
    cuda = info["cuda"]
    assert set(cuda) >= {"built", "available", "reason", "device"}
    assert cuda["available"] == (cuda["device"] is not None)
    assert cuda["available"] or cuda["reason"]


def test_a_missing_cuda_module_is_reported_not_raised(monkeypatch):
    """Built without CUDA (no nvcc, or SCRATCHGPT_NO_CUDA=1): info says so, get_backend raises."""
    import scratchgpt.kernels as kernels
    from scratchgpt.ops import get_backend

    def no_cuda(backend):
        raise ImportError(f"No module named 'scratchgpt.kernels._{backend}'")

    monkeypatch.delenv("SCRATCHGPT_EMULATE_CUDA", raising=False)   # the real cuda module
    monkeypatch.setattr(kernels, "_MODULES", {})
    monkeypatch.setattr(kernels, "_import", no_cuda)
    status = kernels.backend_status("cuda")
    assert status["built"] is False and status["available"] is False and status["device"] is None
    assert "not built" in status["reason"] and "SCRATCHGPT_NO_CUDA" in status["reason"]
    with pytest.raises(RuntimeError, match="backend 'cuda' is unavailable: the cuda kernel module is not built"):
        get_backend("cuda")



@pytest.mark.slow
def test_dparams_past_the_old_grid_limit(host_runtime):
    """The dweight/dbias partial sums over chunks of 128 rows had the chunks on grid.y (at most
    65535: 8.4 M rows); one row more. C = 2, mean and rstd given (the backward takes them as
    inputs). About a minute on the host: the dx kernel's warp reductions run for every row."""
    rt = host_runtime
    N, C = 65535 * 128 + 1, 2
    x, weight, _, dout = make_inputs((N, C), 21)
    mean = x.astype(np.float64).mean(axis=1)
    rstd = 1.0 / np.sqrt(((x - mean[:, None]) ** 2).mean(axis=1) + 1e-5)
    mean32, rstd32 = mean.astype(np.float32), rstd.astype(np.float32)
    dx, dweight, dbias = (np.full(shape, np.nan, np.float32) for shape in ((N, C), (C,), (C,)))
    workspace = np.full(rt.lib.layernorm_backward_workspace(N, C), np.nan, np.float32)
    rt.lib.layernorm_backward(dx, dweight, dbias, workspace, dout, x, weight, mean32, rstd32, rt.stream())
    xhat = (x - mean32[:, None].astype(np.float64)) * rstd32[:, None]
    d = dout.astype(np.float64)
    assert_sum_close(dweight, (d * xhat).sum(0), np.abs(d * xhat).sum(0), N)
    assert_sum_close(dbias, d.sum(0), np.abs(d).sum(0), N)
    g = d * weight
    want_dx = rstd32[:, None] * (g - g.mean(1, keepdims=True) - xhat * (g * xhat).mean(1, keepdims=True))
    assert np.isfinite(dx).all()
    np.testing.assert_allclose(dx, want_dx, rtol=1e-3, atol=1e-3 * np.abs(want_dx).max())


# ----------------------------------------------------------------- bfloat16 / float16 storage
KINDS = ["bf16", "fp16"]


def storage_exact(x, weight, bias, dout, mean32, rstd32, eps=1e-5):
    """float64 results on the (T-rounded) inputs, and e32, the bound of the kernel's float32
    arithmetic, for each (gamma(n) = n u / (1 - n u), u = 2^-24; any order of a float32 sum of n
    terms errs by at most gamma(n - 1) sum|terms|).

    forward, from x, weight, bias: mean = sum(x) / C errs by dm <= gamma(C + 1) mean|x|; the
    centred squares (x - mean^)^2 sum to C (v + dm^2) (the cross term sums to 0), so with the
    division, + eps and rsqrtf (2 ulp) rstd errs relatively by
        e_r <= gamma(C + 8) + dm^2 / (2 (v + eps));
    out = (x - mean^) rstd^ w + b (4 roundings) errs by |xhat w| (e_r + 4u) + dm rstd |w| + u |b|.
    backward, from dout, x, weight and the kernel's own mean and rstd (the backward's inputs, so
    the exact dx and parameter gradients use them): g = dout w, dx = rstd (g - mean(g) - xhat
    mean(g xhat)) with float32 means of C terms and 8 roundings around them:
        e(dx) <= gamma(C + 8) rstd (|g| + mean|g| + |xhat| mean|g xhat|);
    dweight = sum over rows of dout (x - mean) rstd (3 roundings per term), dbias = sum of dout:
        e <= gamma(rows + 3) sum|dout xhat|,  gamma(rows) sum|dout|  (float32 outputs)."""
    x, w, b, d = f64(x), f64(weight), f64(bias), f64(dout)
    C = x.shape[-1]
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(var + eps)
    xhat = (x - mean) * rstd
    out = xhat * w + b
    dm = gamma(C + 1) * np.abs(x).mean(-1, keepdims=True)
    e_r = gamma(C + 8) + dm ** 2 / (2 * (var + eps))
    e_out = np.abs(xhat * w) * (e_r + 4 * U32) + dm * rstd * np.abs(w) + U32 * np.abs(b)

    m_k, r_k = f64(mean32).reshape(mean.shape), f64(rstd32).reshape(rstd.shape)
    xh = (x - m_k) * r_k
    g = d * w
    dx = r_k * (g - g.mean(-1, keepdims=True) - xh * (g * xh).mean(-1, keepdims=True))
    e_dx = gamma(C + 8) * r_k * (np.abs(g) + np.abs(g).mean(-1, keepdims=True)
                                 + np.abs(xh) * np.abs(g * xh).mean(-1, keepdims=True))
    rows = lambda a: a.reshape(-1, C)   # noqa: E731
    n = rows(x).shape[0]
    dweight, dbias = rows(d * xh).sum(0), rows(d).sum(0)
    e_dweight = gamma(n + 3) * rows(np.abs(d * xh)).sum(0)
    e_dbias = gamma(n) * rows(np.abs(d)).sum(0)
    return dict(out=(out, e_out), mean=(mean, dm), rstd=(rstd, e_r * rstd), dx=(dx, e_dx),
                dweight=(dweight, e_dweight), dbias=(dbias, e_dbias))


def check_storage(rt, x, weight, bias, dout, kind, place=None, eps=1e-5):
    """Inputs rounded to T; out and dx must be T within u_T |exact| + e32 + floor_T; mean, rstd,
    dweight and dbias float32 within e32 + the float32 floor."""
    place = place or rt.asarray
    xs, ws, bs, ds = (storage(a, kind) for a in (x, weight, bias, dout))
    T, lib = xs.dtype, rt.lib
    rows = x.size // x.shape[-1]
    out = poisoned(rt, x.shape, T)
    mean, rstd = poisoned(rt, x.shape[:-1] + (1,)), poisoned(rt, x.shape[:-1] + (1,))
    xd, wd = place(xs), place(ws)
    lib.layernorm_forward(rt.bits(out), mean, rstd, rt.bits(xd), rt.bits(wd), rt.bits(place(bs)), eps,
                          rt.stream())
    dx, dweight, dbias = poisoned(rt, x.shape, T), poisoned(rt, weight.shape), poisoned(rt, weight.shape)
    workspace = poisoned(rt, (lib.layernorm_backward_workspace(rows, x.shape[-1]),))
    lib.layernorm_backward(rt.bits(dx), dweight, dbias, workspace, rt.bits(place(ds)), rt.bits(xd),
                           rt.bits(wd), mean, rstd, rt.stream())
    got = {k: rt.asnumpy(a) for k, a in
           dict(out=out, mean=mean, rstd=rstd, dx=dx, dweight=dweight, dbias=dbias).items()}
    want = storage_exact(xs, ws, bs, ds, got["mean"], got["rstd"], eps)
    for name in ("out", "dx"):
        assert_within(got[name], *want[name], kind, name, dtype=T)
    for name in ("mean", "rstd", "dweight", "dbias"):
        assert_within(got[name], *want[name], "fp32", name, dtype=np.float32)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 8), (4, 9), (2, 3, 64), (6, 130), (2, 1023),
                                   (3, 2048), (300, 24)])
def test_storage_shapes(kernel_runtime, kind, shape):
    """C around the 8-value pack (1, 7, 8, 9), not a multiple of 32, many rows (several chunks of
    the parameter-gradient sums)."""
    check_storage(kernel_runtime, *make_inputs(shape, sum(shape) + 3), kind)


@given(lead=st.lists(st.integers(1, 6), min_size=0, max_size=2), rows=st.integers(1, 40),
       C=st.sampled_from(WIDTHS + [8, 16, 24]), kind=st.sampled_from(KINDS), seed=st.integers(0, 2**16))
def test_storage_matches_exact(kernel_runtime, lead, rows, C, kind, seed):
    check_storage(kernel_runtime, *make_inputs(tuple(lead) + (rows, C), seed), kind)


@pytest.mark.parametrize("kind", KINDS)
def test_storage_misaligned_rows_take_the_scalar_path(kernel_runtime, kind):
    """C % 8 == 0 but the arrays start 2 bytes past a 16-byte boundary."""
    rt = kernel_runtime
    check_storage(rt, *make_inputs((5, 64), 3), kind, place=lambda a: device_shifted(rt, a))


@pytest.mark.parametrize("kind", KINDS)
def test_storage_wrapper(kernel_runtime, kind):
    """The wrapper's dtypes: out and dx of x's type, mean, rstd, dweight, dbias float32."""
    from scratchgpt.kernels import REGISTRY
    rt = kernel_runtime
    op = REGISTRY["layernorm"](rt)
    x, weight, bias, dout = (storage(a, kind) for a in make_inputs((2, 3, 40), 5))
    out, cache = op.forward(rt.asarray(x), rt.asarray(weight), rt.asarray(bias), eps=1e-3)
    dx, dweight, dbias = op.backward(rt.asarray(dout), cache)
    mean, rstd = (rt.asnumpy(a) for a in cache[1:3])
    assert mean.shape == rstd.shape == (2, 3, 1)
    want = storage_exact(x, weight, bias, dout, mean, rstd, eps=1e-3)
    for name, a in dict(out=out, dx=dx).items():
        assert_within(rt.asnumpy(a), *want[name], kind, name, dtype=x.dtype)
    for name, a in dict(mean=mean, rstd=rstd, dweight=dweight, dbias=dbias).items():
        assert_within(rt.asnumpy(a), *want[name], "fp32", name, dtype=np.float32)


def test_storage_dtypes_are_checked_by_name(host_runtime):
    from scratchgpt.kernels import REGISTRY
    rt, lib = host_runtime, host_runtime.lib
    op = REGISTRY["layernorm"](rt)
    x, weight, bias, dout = make_inputs((4, 8), 0)
    xb, wb, bb = (storage(a, "bf16") for a in (x, weight, bias))
    stat = lambda: np.empty(4, np.float32)   # noqa: E731
    with pytest.raises(TypeError, match=r"^weight: expected bfloat16 \(uint16 bits\) like x, got float32"):
        op.forward(xb, weight, bb)
    with pytest.raises(TypeError, match=r"^bias: expected float16 like x, got bfloat16 \(uint16 bits\)"):
        op.forward(storage(x, "fp16"), storage(weight, "fp16"), bb)
    with pytest.raises(TypeError, match=r"^out: expected bfloat16 \(uint16 bits\) like x, got float32"):
        lib.layernorm_forward(np.empty((4, 8), np.float32), stat(), stat(), rt.bits(xb), rt.bits(wb),
                              rt.bits(bb), 1e-5)
    with pytest.raises(TypeError, match=r"^mean: expected float32, got float16"):
        lib.layernorm_forward(np.empty((4, 8), np.float16), np.empty(4, np.float16), stat(),
                              storage(x, "fp16"), storage(weight, "fp16"), storage(bias, "fp16"), 1e-5)
    _, cache = op.forward(xb, wb, bb)
    with pytest.raises(TypeError, match=r"^dout: expected bfloat16 \(uint16 bits\) like x, got float32"):
        op.backward(dout, cache)
    ws = np.empty(lib.layernorm_backward_workspace(4, 8), np.float32)
    with pytest.raises(TypeError, match=r"^dweight: expected float32, got uint16"):
        lib.layernorm_backward(rt.bits(np.empty_like(xb)), rt.bits(np.empty_like(wb)), np.empty(8, np.float32),
                               ws, rt.bits(storage(dout, "bf16")), rt.bits(xb), rt.bits(wb), stat(), stat())
