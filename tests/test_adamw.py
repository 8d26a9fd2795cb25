import math

import numpy as np
import pytest

from scratchgpt import GPT, GPTConfig
from scratchgpt.ops import get_backend
from scratchgpt.optim import AdamW
from scratchgpt.reference import adamw


def test_one_step_against_a_hand_computed_example():
    p = np.array([1.0, -2.0])
    g = np.array([0.5, 0.1])
    m, v = np.zeros(2), np.zeros(2)
    adamw.update(p, g, m, v, step=1, lr=0.1, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    # m = 0.1 g = [0.05, 0.01];  v = 0.05 g^2 = [0.0125, 0.0005]
    np.testing.assert_allclose(m, [0.05, 0.01], rtol=1e-15)
    np.testing.assert_allclose(v, [0.0125, 0.0005], rtol=1e-15)
    # bias-corrected: m/0.1 = [0.5, 0.1]; sqrt(v/0.05) = [0.5, 0.1]; so the step is lr * 1 (minus eps)
    # decay first: p (1 - lr wd) = [0.99, -1.98]
    np.testing.assert_allclose(p, [0.99 - 0.1 * 0.5 / (0.5 + 1e-8), -1.98 - 0.1 * 0.1 / (0.1 + 1e-8)],
                               rtol=1e-15)


def test_second_step_against_hand_computation():
    p, m, v = np.array([2.0]), np.zeros(1), np.zeros(1)
    adamw.update(p, np.array([1.0]), m, v, 1, lr=0.01, beta1=0.5, beta2=0.5, eps=0.0)
    adamw.update(p, np.array([-3.0]), m, v, 2, lr=0.01, beta1=0.5, beta2=0.5, eps=0.0)
    # m2 = 0.5*0.5 + 0.5*(-3) = -1.25 ; v2 = 0.5*0.5 + 0.5*9 = 4.75 ; bc1 = bc2 = 0.75
    step2 = (0.01 / 0.75) * -1.25 / (math.sqrt(4.75) / math.sqrt(0.75))
    np.testing.assert_allclose(p, [2.0 - 0.01 - step2], rtol=1e-14)


def test_matches_torch_adamw_over_steps():
    torch = pytest.importorskip("torch", reason="torch not installed: comparison with torch.optim.AdamW skipped")
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((4, 3))
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    tp = torch.tensor(p0, requires_grad=True)
    opt = torch.optim.AdamW([tp], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for step in range(1, 6):
        g = rng.standard_normal(p0.shape)
        adamw.update(p, g, m, v, step, 1e-2, 0.9, 0.95, 1e-8, 0.1)
        tp.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12)


def test_clip_by_global_norm():
    grads = [np.array([3.0, 0.0]), np.array([[4.0]])]
    assert adamw.clip_by_global_norm(grads, max_norm=10.0) == 5.0
    np.testing.assert_array_equal(grads[0], [3.0, 0.0])                      # untouched below
    assert adamw.clip_by_global_norm(grads, max_norm=1.0) == 5.0
    np.testing.assert_allclose(adamw.global_norm(grads), 1.0, rtol=1e-6)
    np.testing.assert_allclose(grads[0], [3.0 / (5 + 1e-6), 0.0])


def test_optimizer_decays_only_matrices():
    model = GPT(GPTConfig.preset("nano"), seed=0)
    before = {k: p.copy() for k, p in model.params.items()}
    opt = AdamW(model.params, get_backend("numpy"), lr=0.1, weight_decay=0.5)
    opt.step({k: np.zeros_like(p) for k, p in model.params.items()})
    for k, p in model.params.items():
        expected = before[k] * (1 - 0.05) if p.ndim >= 2 else before[k]      # zero grads: decay only
        np.testing.assert_allclose(p, expected, rtol=1e-15, err_msg=k)
    assert adamw.decays("wte.weight", model.params["wte.weight"])
    assert not adamw.decays("h.0.ln_1.weight", model.params["h.0.ln_1.weight"])
    assert not adamw.decays("h.0.attn.c_attn.bias", model.params["h.0.attn.c_attn.bias"])


def test_bad_input_raises():
    with pytest.raises(ValueError, match="step"):
        adamw.update(np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2), 0, 0.1)
    with pytest.raises(ValueError, match="grad"):
        adamw.update(np.zeros(2), np.zeros(3), np.zeros(2), np.zeros(2), 1, 0.1)
