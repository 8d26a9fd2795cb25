"""The whole model on the compiled kernels against the NumPy reference.

One forward + backward of tiny GPTs on backend "host" (float32 kernels, run by the host
executor) and, marked `cuda`, on the GPU, against backend "numpy" in float64 from the same
float32-rounded weights: loss within 1e-5 relative, every parameter gradient within 1e-4
relative norm; one AdamW step moves the parameters identically within 1e-5; with dropout on,
both backends draw the same masks. No op may fall back to the reference.
"""
import warnings

import numpy as np
import pytest

from scratchgpt import GPT, GPTConfig
from scratchgpt.kernels import KernelFallbackWarning
from scratchgpt.ops import get_backend
from scratchgpt.optim import AdamW

CONFIGS = {
    "pre-LN, dense": dict(),
    "pre-LN, exact GELU": dict(gelu="none"),
    "pre-LN, dense/banded": dict(attn_pattern=["dense", "banded"], attn_window=3),
    "post-LN, banded": dict(ln_placement="post", attn_pattern="banded", attn_window=2),
}


@pytest.fixture
def backend(kernel_runtime):
    """"host", and "cuda" (marked) where a GPU is present: see tests/conftest.py."""
    return kernel_runtime.backend


def rel(got, want):
    got = np.asarray(got, dtype=np.float64)
    assert np.all(np.isfinite(got))
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def twin_models(backend, overrides, seed=0, **cfg_overrides):
    """A float32 model on `backend` and a float64 numpy model holding the same float32 weights."""
    cfg = GPTConfig.preset("nano", **overrides, **cfg_overrides)
    fast = GPT(cfg, backend=backend, dtype="float32", seed=seed)
    rng = np.random.default_rng(seed + 7)
    weights = {k: (np.asarray(fast.be.asnumpy(p)) + (0.1 * rng.standard_normal(p.shape) if p.ndim == 1 else 0)
                   ).astype(np.float32) for k, p in fast.params.items()}
    fast.load_params(weights)
    ref = GPT(cfg, backend="numpy", dtype="float64", seed=seed)
    ref.load_params({k: v.astype(np.float64) for k, v in weights.items()})
    return fast, ref


def batch(cfg_vocab=32, B=3, T=11, seed=1):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, cfg_vocab, size=(B, T))
    targets = rng.integers(0, cfg_vocab, size=(B, T))
    targets[0, 2] = -1
    return idx, targets


def test_no_op_falls_back():
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelFallbackWarning)
        be = get_backend("host")
    assert be.fallbacks == []


def assert_step_matches(fast, ref, steps=1):
    """Forward (steps times: dropout masks change each step) and backward on both models:
    loss within 1e-5 relative, every gradient within 1e-4 relative norm."""
    idx, targets = batch()
    for _ in range(steps):
        _, loss = fast.forward(idx, targets)
        _, ref_loss = ref.forward(idx, targets)
        assert abs(float(loss) - ref_loss) <= 1e-5 * abs(ref_loss)
    grads, ref_grads = fast.backward(), ref.backward()
    for k in ref_grads:
        assert rel(fast.be.asnumpy(grads[k]), ref_grads[k]) < 1e-4, k


@pytest.mark.parametrize("label", list(CONFIGS))
def test_forward_backward_match_reference(backend, label):
    assert_step_matches(*twin_models(backend, CONFIGS[label]))


def test_materialized_attention_matches_reference(backend, monkeypatch):
    """The model on attention version (a), the study version, instead of the fused default."""
    monkeypatch.setenv("SCRATCHGPT_ATTENTION", "materialized")
    fast, ref = twin_models(backend, CONFIGS["pre-LN, dense/banded"])
    assert fast.be.attention.version == "materialized"
    assert_step_matches(fast, ref)


def test_adamw_step_matches_reference(backend):
    fast, ref = twin_models(backend, {})
    idx, targets = batch()
    fast.forward(idx, targets)
    ref.forward(idx, targets)
    grads, ref_grads = fast.backward(), ref.backward()
    opt = AdamW(fast.params, fast.be, lr=1e-2, weight_decay=0.1)
    ref_opt = AdamW(ref.params, ref.be, lr=1e-2, weight_decay=0.1)
    before = {k: ref.params[k].copy() for k in ref.params}
    opt.step(grads, max_grad_norm=0.5)
    ref_opt.step(ref_grads, max_grad_norm=0.5)
    for k in ref.params:
        after = fast.be.asnumpy(fast.params[k])
        assert rel(after, ref.params[k]) < 1e-5, k
        # the step itself (about lr per element): float32 rounding of the parameters bounds
        # how closely the two movements can agree
        assert rel(after - before[k], ref.params[k] - before[k]) < 1e-4, k


def test_dropout_masks_match_reference(backend):
    assert_step_matches(*twin_models(backend, {}, dropout=0.25), steps=2)


def test_cached_generation_on_kernels_equals_reference(backend):
    fast, ref = twin_models(backend, CONFIGS["pre-LN, dense/banded"])
    prompt = np.array([[3, 1, 4], [1, 5, 9]])
    np.testing.assert_array_equal(fast.generate(prompt, 10, temperature=0),
                                  ref.generate(prompt, 10, temperature=0))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", ["pre-LN, dense", "post-LN, banded"])
def test_mixed_precision_step_matches_the_reference(backend, precision, name):
    """bf16 / fp16 on the kernels against the numpy reference in the same precision, from the
    same fp32 masters: both store every activation in S and round where ROUNDINGS says
    (docs/gradients/mixed_precision.md), so they differ only where a rounding falls the other
    way (fp32 sums in another order; the tensor-core attention also rounds P and dS to S as
    mma operands, which the reference keeps in fp32). Each such flip is one unit roundoff u_S
    of one value; on nano's longest path (embedding, 2 x (LN, 3 linears, attention, GELU,
    2 residuals), LN, head) about 16 roundings meet, so the loss and every parameter gradient
    are held to 16 u_S relative (measured: 2e-6 / 1.5 u_S for bf16, 8e-7 / 1.8 u_S for fp16)."""
    from scratchgpt.precision import UNIT_ROUNDOFF, storage_dtype
    u = UNIT_ROUNDOFF[precision]
    cfg = GPTConfig.preset("nano", **CONFIGS[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # ops still widened to their fp32 kernel are listed
        fast = GPT(cfg, backend=backend, precision=precision, seed=3)
    ref = GPT(cfg, backend="numpy", precision=precision, seed=3)
    idx, targets = batch()
    (logits, loss), (r_logits, r_loss) = fast.forward(idx, targets), ref.forward(idx, targets)
    assert fast.be.asnumpy(logits).dtype == storage_dtype(precision)
    assert abs(float(loss) - float(r_loss)) <= 16 * u * abs(float(r_loss))
    grads, r_grads = fast.backward(), ref.backward()
    for k in r_grads:
        g = fast.be.asnumpy(grads[k])
        assert g.dtype == np.float32, k                      # parameter gradients stay fp32
        assert rel(g, r_grads[k].astype(np.float64)) <= 16 * u, k
    np.testing.assert_array_equal(fast.generate(idx[:, :4], 5, temperature=0),
                                  ref.generate(idx[:, :4], 5, temperature=0))
