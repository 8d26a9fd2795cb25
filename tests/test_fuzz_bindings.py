"""Fuzz every bound launcher of `_host` with bad arguments.

The valid calls are recorded by running each registered op wrapper once on small random inputs
(so a new binding is covered as soon as its wrapper uses it, and the coverage check below fails
if one is not). Hypothesis then replays a recorded call with one argument spoiled: a wrong dtype,
a shape one element short, a non-contiguous view, a read-only output, a Python list, an
empty array, or another argument of the call in its place (aliasing). The first four must raise
TypeError or ValueError naming nothing in particular but never crash; empty and aliased
arguments must either raise or compute, never crash. Afterwards the interpreter still computes
correct results. The same file runs under the AddressSanitizer build in CI.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scratchgpt.kernels import REGISTRY, Runtime, backend_status
from scratchgpt.reference import layernorm as ref_layernorm

# bound functions that are not launchers over arrays (sizes, info, the executor's and the
# tensor-core wrappers' own test kernels)
NOT_LAUNCHERS = {"info", "exec_test_misuse", "quant_linear_gemv_max_rows", "gru_shared_u_limit"}
ERRORS = (TypeError, ValueError)


class Recorder:
    """Stands in for the bound module: records the first call of each launcher, then calls it."""

    def __init__(self, lib):
        self._lib = lib
        self.calls = {}

    def __getattr__(self, name):
        target = getattr(self._lib, name)
        if not callable(target):
            return target

        def record(*args, **kwargs):
            if any(isinstance(a, np.ndarray) for a in list(args) + list(kwargs.values())):
                self.calls.setdefault(name, (args, kwargs))
            return target(*args, **kwargs)
        return record


def exercise(ops, rng):
    """Every op forward and backward once, with small random float32 inputs."""
    f = lambda *s: rng.standard_normal(s).astype(np.float32)   # noqa: E731
    B, T, C, H, V = 2, 5, 8, 2, 11
    idx = rng.integers(0, V, (B, T))
    x, cache = ops["embedding"].forward(idx, f(V, C), f(T + 1, C))
    ops["embedding"].backward(f(B, T, C), cache)
    y, cache = ops["layernorm"].forward(x, f(C), f(C))
    ops["layernorm"].backward(f(B, T, C), cache)
    for bias in (f(3 * C), None):
        qkv, cache = ops["linear"].forward(y, f(3 * C, C), bias)
        ops["linear"].backward(f(B, T, 3 * C), cache)
    for version in ("flash", "materialized"):
        a, cache = ops["attention"].forward(qkv, H, 3, version=version)
        ops["attention"].backward(f(B, T, C), cache)
    q = f(B, H, 1, C // H)
    ops["attention"].decode(q, f(B, H, T, C // H), f(B, H, T, C // H), T - 1, None)
    g, cache = ops["gelu"].forward(a)
    ops["gelu"].backward(f(B, T, C), cache)
    ops["residual"].forward(a, g)
    d, cache = ops["dropout"].forward(a, 0.3, 7, stream=1)
    ops["dropout"].backward(f(B, T, C), cache)
    targets = rng.integers(0, V, (B, T))
    loss, cache = ops["softmax_xent"].forward(f(B, T, V), targets)
    ops["softmax_xent"].backward(1.0, cache)
    p, grad, m, v = f(4, 3), f(4, 3), f(4, 3), np.abs(f(4, 3))
    ops["adamw"].update(p, grad, m, v, 2, 1e-2, 0.9, 0.95, 1e-8, 0.1)
    ops["adamw"].clip_by_global_norm([grad, f(5)], 0.1)
    hs, cache = ops["gru"].forward(f(B, T, C), f(B, 3), f(9, C), f(9, 3), f(9), f(9))
    ops["gru"].backward(f(B, T, 3), cache)


def exercise_quant_linear(rt, rng):
    """quant_linear (not a training op, so not in REGISTRY): int4 through the GEMM and the GEMV
    with a bias, int8 without, and the dequantisation."""
    from scratchgpt.kernels.quant_linear import QuantLinear
    from scratchgpt.reference import quant_linear as ql
    op = QuantLinear(rt)
    w = rng.standard_normal((6, 16)).astype(np.float32)
    q4, q8 = ql.quantize_rtn(w, 4, 8), ql.quantize_rtn(w, 8)
    for rows in (9, 2):
        op.forward(rng.standard_normal((rows, 16)).astype(np.float32), q4,
                   rng.standard_normal(6).astype(np.float32))
    op.forward(rng.standard_normal((2, 16)).astype(np.float32), q8)
    op.dequantize(q4)


@pytest.fixture(scope="module")
def recorded():
    if not backend_status("host")["available"]:
        pytest.fail("the host backend must be built")
    rt = Runtime("host")
    recorder = Recorder(rt.lib)
    rt.lib = recorder
    exercise({name: cls(rt) for name, cls in REGISTRY.items()}, np.random.default_rng(0))
    exercise_quant_linear(rt, np.random.default_rng(1))
    return Recorded(Runtime("host").lib, recorder.calls)


class Recorded(tuple):
    """(lib, calls) with a short repr, for hypothesis' failure reports."""

    def __new__(cls, lib, calls):
        return super().__new__(cls, (lib, calls))

    def __repr__(self):
        return f"<{len(self[1])} recorded launcher calls>"


def test_every_launcher_is_exercised(recorded):
    lib, calls = recorded
    launchers = {n for n in dir(lib) if callable(getattr(lib, n)) and not n.startswith("_")
                 and not n.startswith(("exec_test_", "mma_test_")) and not n.endswith("_workspace")
                 and not n.endswith("_blocks") and n not in NOT_LAUNCHERS}
    missing = launchers - set(calls) - {"dropout_philox_blocks"}
    assert not missing, f"launchers no op wrapper called (add them to exercise()): {sorted(missing)}"


def _array_positions(args):
    return [i for i, a in enumerate(args) if isinstance(a, np.ndarray)]


def spoil(a, how):
    if how == "dtype":
        return a.astype(np.float64 if a.dtype == np.float32 else np.float32)
    if how == "short":
        return a.reshape(-1)[:-1].copy() if a.ndim <= 1 else np.ascontiguousarray(a[..., :-1])
    if how == "strided":
        wide = np.repeat(a[..., None], 2, axis=-1)
        return wide[..., 0]
    if how == "readonly":
        r = a.copy()
        r.setflags(write=False)
        return r
    if how == "list":
        return a.tolist()
    if how == "empty":
        return np.empty((0,) + a.shape[1:], a.dtype)
    raise AssertionError(how)


MUST_RAISE = {"dtype", "short", "strided", "list"}
# arguments whose size is free: the launcher works on whatever length it is given
FREE_SIZE = {("global_norm_clip", 0),          # scales the array in place
             ("global_norm_finish", 1),        # sums however many partials there are
             ("global_norm_partials", 1)}      # a shorter x needs no more partials than given


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_spoiled_arguments_raise_and_never_crash(recorded, data):
    lib, calls = recorded
    name = data.draw(st.sampled_from(sorted(calls)), label="launcher")
    args, kwargs = calls[name]
    positions = _array_positions(args)
    i = data.draw(st.sampled_from(positions), label="argument")
    how = data.draw(st.sampled_from(["dtype", "short", "strided", "readonly", "list", "empty", "alias"]),
                    label="spoil")
    a = args[i]
    if how in ("short", "strided") and a.size < 2:
        how = "dtype"
    j = data.draw(st.sampled_from(positions), label="alias of")
    # fresh copies: a launch that computes must not scribble on the recorded arrays
    call = [x.copy() if isinstance(x, np.ndarray) else x for x in args]
    call[i] = call[j] if how == "alias" else spoil(a, how)
    must_raise = how in MUST_RAISE and (how != "short" or (name, i) not in FREE_SIZE)
    if how == "readonly" and not a.flags.writeable:
        return
    try:
        getattr(lib, name)(*call, **kwargs)
    except ERRORS as e:
        assert str(e), "the error must say what is wrong"
        return
    except RuntimeError as e:                     # a device-side check, reported after the launch
        assert str(e)
        return
    assert not must_raise, f"{name}: argument {i} spoiled by {how!r} was accepted"
    if how == "readonly":
        # a read-only array passes only where the launcher never writes it (an input)
        np.testing.assert_array_equal(call[i], a)


def test_interpreter_still_computes_correctly_after_fuzzing(recorded):
    lib, _ = recorded
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 33)).astype(np.float32)
    w, b = rng.standard_normal(33).astype(np.float32), rng.standard_normal(33).astype(np.float32)
    out, mean, rstd = (np.full(s, np.nan, np.float32) for s in ((7, 33), (7, 1), (7, 1)))
    lib.layernorm_forward(out, mean, rstd, x, w, b, 1e-5, 0)
    want, _ = ref_layernorm.forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
    assert np.linalg.norm(out - want) / np.linalg.norm(want) < 1e-6
