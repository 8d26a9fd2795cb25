"""The emulated device (SCRATCHGPT_EMULATE_CUDA=1): its arrays refuse what CuPy 14 refuses, its
bindings refuse memory that is not the device's, its memory pool counts, and the cuda backend's
commands (train, sample, finetune) run on it with the host backend's numbers.

These tests turn the emulation on for themselves (the module reads the variable at each call),
so they run in the default `pytest`; `SCRATCHGPT_EMULATE_CUDA=1 pytest -m cuda` runs every
kernel and model test's cuda variant on the device as well (.ci/run does both).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from corpus import TEXT


@pytest.fixture
def xp(monkeypatch):
    monkeypatch.setenv("SCRATCHGPT_EMULATE_CUDA", "1")
    from scratchgpt.kernels import backend_status, device_array_module
    status = backend_status("cuda")
    if not status["available"]:
        pytest.fail(f"the emulated device must be available wherever _host is: {status['reason']}")
    return device_array_module()


@pytest.fixture
def lib(xp):
    from scratchgpt.kernels import load
    return load("cuda")


def test_the_device_is_reported_as_emulated(xp):
    from scratchgpt.info import _describe
    from scratchgpt.kernels import backend_status
    status = backend_status("cuda")
    assert status["emulated"] is True and status["device"]["name"] == "emulated on the host executor"
    assert "emulated on the host executor" in _describe("cuda", status)


# ------------------------------------------------------------------ the borders CuPy enforces
def test_no_implicit_conversion_to_numpy(xp):
    d = xp.asarray(np.arange(6.0).reshape(2, 3))
    assert not isinstance(d, np.ndarray) and hasattr(d, "__cuda_array_interface__")
    assert not hasattr(d, "__array_interface__")
    for convert in (np.asarray, np.array, lambda a: np.add(a, np.ones((2, 3)))):
        with pytest.raises(TypeError):
            convert(d)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(d)
    with pytest.raises(TypeError):        # a multi-element array is no scalar
        float(d)
    np.testing.assert_array_equal(xp.asnumpy(d), np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(d.get(), np.arange(6.0).reshape(2, 3))
    assert float(d[1, 2]) == 5.0 and int(d.sum()) == 15


def test_numpy_arrays_are_refused_as_operands(xp):
    d, h = xp.ones((2, 3)), np.ones((2, 3))
    for op in (lambda: d + h, lambda: h + d, lambda: d * h, lambda: xp.maximum(d, h),
               lambda: xp.where(d > 0, h, d)):
        with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
            op()
    with pytest.raises(TypeError):
        d[...] = h                          # CuPy: only scalars and device arrays
    # scalars, Python's and NumPy's, are fine
    np.testing.assert_array_equal((d * 2 + np.float32(1)).get(), np.full((2, 3), 3.0))


def test_routines_take_device_arrays_only(xp):
    h = np.zeros((2, 3), np.int64)
    with pytest.raises(TypeError, match="Argument 'a' has incorrect type"):
        xp.ascontiguousarray(h)            # what the model did with NumPy token ids
    with pytest.raises(TypeError, match="Only cupy arrays can be concatenated"):
        xp.concatenate([xp.asarray(h), h])
    # zeros_like reads shape and dtype only, in CuPy as here
    z = xp.zeros_like(h)
    assert isinstance(z, xp.ndarray) and z.shape == (2, 3) and z.dtype == np.int64


def test_numpy_functions_dispatch_to_the_device(xp):
    d = xp.asarray(np.linspace(-1, 1, 12).reshape(3, 4))
    for fn in (np.exp, np.tanh, lambda a: np.sum(a, axis=1), lambda a: np.concatenate([a, a])):
        got = fn(d)
        assert isinstance(got, xp.ndarray)
        np.testing.assert_allclose(got.get(), fn(d.get()))


def test_views_share_device_memory(xp):
    d = xp.asarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    t = d.transpose(2, 0, 1)
    t[0, 0, 0] = -1.0
    assert float(d[0, 0, 0]) == -1.0
    assert t.__cuda_array_interface__["data"][0] == d.__cuda_array_interface__["data"][0]
    assert t.__cuda_array_interface__["strides"] is not None          # not C-contiguous
    c = xp.ascontiguousarray(t)
    assert c.__cuda_array_interface__["strides"] is None
    np.testing.assert_array_equal(c.get(), t.get())
    idx = d[:, np.array([0, 2])]                                      # NumPy indices are copied over
    np.testing.assert_array_equal(idx.get(), d.get()[:, [0, 2]])


# --------------------------------------------------------------------------- the bindings
def test_launchers_refuse_host_memory(xp, lib):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    out = xp.empty((4, 8), np.float32)
    with pytest.raises(TypeError, match="x: the cuda backend takes device arrays"):
        lib.gelu_forward(out, x, 0)

    class Disguised:        # host memory that claims to be device memory
        def __init__(self, a):
            self.a = a
            self.__cuda_array_interface__ = {"shape": a.shape, "typestr": "<f4", "version": 3,
                                             "data": (a.ctypes.data, False), "strides": None}

    with pytest.raises(TypeError, match="x: not a CUDA device pointer"):
        lib.gelu_forward(out, Disguised(x), 0)
    # a view that runs past its allocation is refused too
    small = xp.asarray(x[:2])
    past = Disguised(x)
    past.__cuda_array_interface__ = dict(past.__cuda_array_interface__,
                                         data=(small.data.ptr, False))
    with pytest.raises(TypeError, match="x: not a CUDA device pointer"):
        lib.gelu_forward(out, past, 0)
    # and the real thing runs
    d = xp.asarray(x)
    lib.gelu_forward(out, d, 0)
    from scratchgpt.reference import gelu
    np.testing.assert_allclose(out.get(), gelu.forward(x.astype(np.float64))[0], rtol=1e-5, atol=1e-6)


def test_memory_pool_counts_and_refuses_past_the_device_size(xp, monkeypatch):
    import gc
    pool = xp.get_default_memory_pool()
    gc.collect()
    before = pool.used_bytes()
    a = xp.zeros((1000, 250), np.float32)   # empty() may hold NaN patterns: a + 1 would warn
    assert pool.used_bytes() - before == 1_000_000
    pool.reset_peak()
    b = a + 1.0
    assert pool.peak_bytes() - before == 2_000_000
    del a, b
    gc.collect()
    assert pool.used_bytes() == before
    free, total = xp.cuda.Device().mem_info
    assert total == xp.device_memory_bytes() and free == total - before
    monkeypatch.setenv("SCRATCHGPT_EMULATED_MEMORY_GB", "0.001")      # ~1 MB device
    with pytest.raises(MemoryError, match="Out of memory allocating 4,000,000 bytes"):
        xp.zeros(1_000_000, np.float32)


def test_cuda_fallback_round_trips_through_the_host(xp):
    """An op without a kernel on the cuda backend: device arrays go to the reference on the host
    and come back, in-place updates included."""
    from scratchgpt.kernels.fallback import HostFallback
    from scratchgpt.reference import adamw, gelu

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5))
    out, cache = HostFallback(gelu, xp).forward(xp.asarray(x))
    want, want_cache = gelu.forward(x)
    assert isinstance(out, xp.ndarray)
    np.testing.assert_array_equal(out.get(), want)
    dx = HostFallback(gelu, xp).backward(xp.asarray(np.ones_like(x)), cache)
    assert isinstance(dx, xp.ndarray)
    np.testing.assert_array_equal(dx.get(), gelu.backward(np.ones_like(x), want_cache))

    param, grad = rng.standard_normal(4), rng.standard_normal(4)
    m, v = np.zeros(4), np.zeros(4)
    device = [xp.asarray(a) for a in (param, grad, m, v)]
    HostFallback(adamw, xp).update(*device, step=1, lr=0.1)
    adamw.update(param, grad, m, v, step=1, lr=0.1)
    for got, want in zip(device, (param, grad, m, v)):
        np.testing.assert_array_equal(got.get(), want)


# ------------------------------------------------------------------- the model and the CLI
def test_model_takes_numpy_ids_on_the_device(xp):
    from scratchgpt import GPT, GPTConfig
    cfg = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)
    idx = np.random.default_rng(1).integers(0, 40, (2, 12))
    cuda, host = GPT(cfg, backend="cuda", dtype="float32"), GPT(cfg, backend="host", dtype="float32")
    (_, lc), (_, lh) = cuda.forward(idx, idx), host.forward(idx, idx)
    assert isinstance(lc, xp.ndarray) or isinstance(lc, float) or np.ndim(lc) == 0
    assert float(lc) == float(lh)
    gc, gh = cuda.backward(), host.backward()
    for k in gh:
        assert isinstance(gc[k], xp.ndarray), k
        np.testing.assert_array_equal(gc[k].get(), gh[k], err_msg=k)
    np.testing.assert_array_equal(cuda.generate(idx[:, :4], 6, temperature=0),
                                  host.generate(idx[:, :4], 6, temperature=0))




def _cli(*args, cwd):
    env = dict(os.environ, SCRATCHGPT_EMULATE_CUDA="1")
    r = subprocess.run([sys.executable, "-m", "scratchgpt.cli", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_train_sample_finetune_on_the_emulated_device_match_host(tmp_path):
    (tmp_path / "input.txt").write_text(TEXT)
    rows = [f"the {w} sat on a mat\t{i % 2}" for i, w in enumerate(("cat", "dog", "bird", "frog") * 10)]
    (tmp_path / "labels.tsv").write_text("\n".join(rows) + "\n")
    common = ["--preset", "nano", "--data", "input.txt", "--tokenizer", "char", "--max-steps", "6",
              "--batch-size", "4", "--eval-interval", "3", "--eval-iters", "2", "--no-progress",
              "--json", "--seed", "3"]
    runs = {}
    for backend in ("cuda", "host"):
        train = json.loads(_cli("train", *common, "--backend", backend, "--out", backend,
                                cwd=tmp_path).strip().splitlines()[-1])
        assert train["backend"] == backend
        sample = _cli("sample", "--ckpt", backend, "--backend", backend, "--prompt", "the ",
                      "--max-new-tokens", "12", "--temperature", "0", cwd=tmp_path)
        tune = json.loads(_cli("finetune", "--data", "labels.tsv", "--ckpt", backend, "--backend",
                               backend, "--epochs", "1", "--batch-size", "8", "--out",
                               f"tuned_{backend}", "--no-progress", "--json",
                               cwd=tmp_path).strip().splitlines()[-1])
        runs[backend] = train, sample, tune
    (tc, sc, fc), (th, sh, fh) = runs["cuda"], runs["host"]
    for key in ("first_loss", "final_loss", "final_val_loss"):
        assert abs(tc[key] - th[key]) <= 1e-6 * abs(th[key]), key
    assert sc == sh
    assert fc["accuracy"] == fh["accuracy"] and fc["n_test"] == fh["n_test"]


def test_sanitizer_step_runs_on_the_emulated_device():
    """benchmarks/sanitizer_step.py, what compute-sanitizer watches on a GPU: both attention
    versions, dropout, AdamW and generation on the cuda backend, here on the emulated device."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "sanitizer_step.py")],
                       env=dict(os.environ, SCRATCHGPT_EMULATE_CUDA="1", SCRATCH_SYNC_LAUNCH="1"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    flash, materialized = (l for l in lines if l.startswith(("flash:", "materialized:")))
    # the two attention versions compute the same step
    assert flash.split(":", 1)[1] == materialized.split(":", 1)[1]
    assert lines[-1] == "sanitizer step done"
