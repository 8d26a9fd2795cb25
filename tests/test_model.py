import json
import math

import numpy as np
import pytest

from scratchgpt import GPT, GPTConfig
from scratchgpt.cli import main as cli_main
from scratchgpt.gradcheck import MODEL_CASES, MODEL_TOLERANCE, check_model
from scratchgpt.ops import get_backend

PUBLISHED = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
             "gpt2-xl": 1_557_611_200, "gpt1": 116_534_784}


@pytest.mark.parametrize("name, count", PUBLISHED.items())
def test_published_parameter_counts(name, count):
    assert GPTConfig.preset(name).num_params() == count


def test_presets():
    gpt1 = GPTConfig.preset("gpt1")
    assert (gpt1.vocab_size, gpt1.block_size, gpt1.ln_placement) == (40478, 512, "post")
    assert "ln_f.weight" not in gpt1.param_shapes()
    for name in ("gpt3-small", "gpt3-medium", "gpt3-large", "gpt3-xl", "gpt3-2.7b", "gpt3-6.7b",
                 "gpt3-13b", "gpt3-175b"):
        cfg = GPTConfig.preset(name)
        assert cfg.block_size == 2048
        assert cfg.layer_patterns()[:2] == ["dense", "banded"]
    # GPT-3 reports 175.0B parameters for its largest model
    assert abs(GPTConfig.preset("gpt3-175b").num_params() / 175e9 - 1) < 0.01
    assert 1_000 < GPTConfig.preset("nano").num_params() < 10_000


def test_flops_per_token():
    cfg = GPTConfig.preset("gpt2")
    assert cfg.flops_per_token() == 6 * 124_439_808 + 12 * 12 * 768 * 1024
    g3 = GPTConfig.preset("gpt3-small")
    keys = 6 * 2048 + 6 * g3.attn_window
    assert g3.flops_per_token() == 6 * g3.num_params() + 12 * 768 * keys


@pytest.mark.parametrize("label", list(MODEL_CASES))
def test_model_gradients_match_finite_differences(label):
    result = check_model(MODEL_CASES[label], per_tensor=6)
    assert result["max_rel"] < MODEL_TOLERANCE, {k: v for k, v in result["params"].items()
                                                  if v["max_rel"] >= MODEL_TOLERANCE}


def test_initial_loss_is_near_uniform():
    cfg = GPTConfig.preset("nano", vocab_size=64)
    model = GPT(cfg, seed=0)
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 64, size=(2, 4, 16))
    _, loss = model.forward(idx, targets)
    assert abs(loss - math.log(64)) < 0.05


def test_init_statistics():
    cfg = GPTConfig.preset("mini")
    p = GPT(cfg, seed=0).params
    assert abs(p["wte.weight"].std() - 0.02) < 1e-3
    assert abs(p["h.0.mlp.c_proj.weight"].std() - 0.02 / math.sqrt(2 * cfg.n_layer)) < 1e-3
    assert np.all(p["h.1.ln_2.weight"] == 1) and np.all(p["h.1.attn.c_attn.bias"] == 0)


@pytest.mark.parametrize("overrides", [{}, {"ln_placement": "post"},
                                       {"attn_pattern": "banded", "attn_window": 2}])
def test_logits_are_causal(overrides):
    model = GPT(GPTConfig.preset("nano", **overrides), seed=1)
    idx = np.random.default_rng(0).integers(0, 32, size=(1, 10))
    logits, _ = model.forward(idx)
    changed = idx.copy()
    changed[0, 6:] = (changed[0, 6:] + 1) % 32
    np.testing.assert_allclose(model.forward(changed)[0][0, :6], logits[0, :6], rtol=1e-12)
    assert not np.allclose(model.forward(changed)[0][0, 6:], logits[0, 6:])


def test_float32_follows_float64():
    cfg = GPTConfig.preset("nano")
    m64, m32 = GPT(cfg, dtype="float64", seed=3), GPT(cfg, dtype="float32", seed=3)
    idx = np.random.default_rng(0).integers(0, 32, size=(2, 12))
    l64, loss64 = m64.forward(idx, idx)
    l32, loss32 = m32.forward(idx, idx)
    assert l32.dtype == np.float32 and loss32.dtype == np.float32
    np.testing.assert_allclose(loss32, loss64, rtol=1e-5)
    g64, g32 = m64.backward(), m32.backward()
    for k in g64:
        assert g32[k].dtype == np.float32
        assert np.linalg.norm(g32[k] - g64[k]) <= 1e-4 * np.linalg.norm(g64[k]), k


def test_dropout_masks_follow_the_step_and_vanish_in_eval():
    model = GPT(GPTConfig.preset("nano", dropout=0.3), seed=0)
    idx = np.random.default_rng(0).integers(0, 32, size=(2, 8))
    a, _ = model.forward(idx)
    b, _ = model.forward(idx)
    assert model.dropout_step == 2 and not np.allclose(a, b)
    model.dropout_step = 0
    np.testing.assert_array_equal(model.forward(idx)[0], a)
    model.eval()
    e1, e2 = model.forward(idx)[0], model.forward(idx)[0]
    np.testing.assert_array_equal(e1, e2)
    assert model.dropout_step == 1


def test_backward_with_a_head_on_the_hidden_state():
    """dhidden adds <dhidden, hidden> to the objective: check it against finite differences."""
    model = GPT(GPTConfig.preset("nano"), seed=0)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 32, size=(2, 5))
    R = rng.standard_normal((2, 5, 16))

    def objective():
        _, loss = model.forward(idx, idx)
        return 0.5 * loss + float(np.sum(R * model.hidden))

    objective()
    grads = model.backward(loss_weight=0.5, dhidden=R)
    w = model.params["h.1.mlp.c_fc.weight"]
    for i in rng.choice(w.size, 5, replace=False):
        old = w.flat[i]
        w.flat[i] = old + 1e-5
        fp = objective()
        w.flat[i] = old - 1e-5
        fm = objective()
        w.flat[i] = old
        assert abs((fp - fm) / 2e-5 - grads["h.1.mlp.c_fc.weight"].flat[i]) < 1e-8


@pytest.mark.parametrize("overrides", [{}, {"ln_placement": "post", "attn_pattern": "banded",
                                            "attn_window": 3}])
@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=1.0, top_k=5),
                                      dict(temperature=0.8, top_p=0.9)])
def test_cached_generation_equals_uncached(overrides, sampling):
    model = GPT(GPTConfig.preset("nano", **overrides), seed=2)
    prompt = np.random.default_rng(0).integers(0, 32, size=(2, 3))
    # 20 new tokens run past block_size=16, where the window starts to slide
    cached = model.generate(prompt, 20, seed=5, **sampling)
    uncached = model.generate(prompt, 20, seed=5, use_cache=False, **sampling)
    np.testing.assert_array_equal(cached, uncached)
    assert cached.shape == (2, 23)
    np.testing.assert_array_equal(cached[:, :3], prompt)


def test_greedy_is_deterministic_and_top_k_1_is_greedy():
    model = GPT(GPTConfig.preset("nano"), seed=4)
    prompt = np.array([[1, 2, 3]])
    greedy = model.generate(prompt, 8, temperature=0)
    np.testing.assert_array_equal(model.generate(prompt, 8, temperature=1.3, top_k=1, seed=9), greedy)
    logits, _ = model.forward(greedy[:, :3])
    assert greedy[0, 3] == logits[0, -1].argmax()


def test_long_prompt_is_cropped_with_a_warning():
    model = GPT(GPTConfig.preset("nano"), seed=0)
    prompt = np.arange(40).reshape(1, 40) % 32
    with pytest.warns(UserWarning, match="longer than the context"):
        out = model.generate(prompt, 2, temperature=0)
    assert out.shape == (1, 42)


def test_bad_input_raises():
    model = GPT(GPTConfig.preset("nano"))
    with pytest.raises(TypeError, match="idx"):
        model.forward(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="block_size"):
        model.forward(np.zeros((1, 17), dtype=int))
    with pytest.raises(ValueError, match="idx: token id 40"):
        model.forward(np.array([[1, 40]]))
    with pytest.raises(ValueError, match="targets"):
        model.forward(np.array([[1, 2]]), np.array([[1, 32]]))
    with pytest.raises(ValueError, match="targets: expected shape"):
        model.forward(np.array([[1, 2]]), np.array([[1]]))
    with pytest.raises(RuntimeError, match="forward first"):
        GPT(GPTConfig.preset("nano")).backward()
    with pytest.raises(ValueError, match="dtype"):
        GPT(GPTConfig.preset("nano"), dtype="float16")
    with pytest.raises(ValueError, match="dtype: the host kernels run in float32"):
        GPT(GPTConfig.preset("nano"), backend="host", dtype="float64")
    with pytest.raises(ValueError, match="backend"):
        get_backend("tpu")


def test_bad_config_raises():
    with pytest.raises(ValueError, match="n_embd"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="attn_window"):
        GPTConfig(attn_pattern="banded")
    with pytest.raises(ValueError, match="attn_pattern"):
        GPTConfig(n_layer=2, attn_pattern=["dense"])
    with pytest.raises(ValueError, match="ln_placement"):
        GPTConfig(ln_placement="middle")
    with pytest.raises(ValueError, match="preset"):
        GPTConfig.preset("gpt5")


def test_gradcheck_cli_json(capsys):
    assert cli_main(["gradcheck", "layernorm", "attention", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report["ops"]) == {"layernorm", "attention"} and report["ok"]
    assert report["ops"]["attention"]["max_rel"] < 1e-6
    assert len(report["ops"]["attention"]["cases"]) == 5
