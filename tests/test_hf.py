"""Hugging Face interop: tiny randomly initialised GPT-2 / GPT-1 models from transformers,
saved, loaded here (and ours saved, loaded there); logits and loss compared in float64.

The comparison needs torch and transformers (the `hf` / `test` extras); without them those
tests skip with the reason, and the key-mapping tests below still run."""
import json

import numpy as np
import pytest

from scratchgpt import GPT, GPTConfig
from scratchgpt.hf import config_from_hf, config_to_hf, params_from_hf, params_to_hf

try:
    import torch
    import transformers
    HF_MISSING = None
except ImportError as e:          # the optional extra is not installed
    HF_MISSING = f"torch and transformers are needed for this comparison: {e}"

needs_hf = pytest.mark.skipif(HF_MISSING is not None, reason=HF_MISSING or "")
TINY = dict(vocab_size=61, n_positions=12, n_embd=16, n_layer=2, n_head=2)
REL_TOL = 1e-9


def rel_err(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def hf_model(kind, seed=0):
    """A tiny HF model in float64 with every parameter random (not only the matrices), so
    layer norms, biases and the tied head are all exercised."""
    torch.manual_seed(seed)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(**TINY, activation_function="gelu_new",
                                      layer_norm_epsilon=1e-5, attn_implementation="eager")
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.OpenAIGPTConfig(**TINY, afn="gelu", layer_norm_epsilon=1e-5,
                                           attn_implementation="eager")
        model = transformers.OpenAIGPTLMHeadModel(cfg)
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 and p.shape[0] == 16 else 0.0))
    return model


def hf_logits_loss(model, idx):
    """HF's float64 logits and the next-token loss on them. transformers computes its own
    loss in float32 (it upcasts logits with .float()), so the float64 loss is taken from the
    float64 logits here, and HF's float32 loss is checked against it at float32 precision."""
    ids = torch.tensor(idx)
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    logits = out.logits.numpy()
    z, y = logits[:, :-1].reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1)
    m = z.max(axis=-1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(axis=-1))
    loss = float(np.mean(lse - z[np.arange(len(y)), y]))
    assert abs(float(out.loss) - loss) / loss < 1e-6
    return logits, loss


def shifted_targets(idx):
    """HF's labels=ids loss: position t predicts token t+1; the last position is ignored."""
    targets = np.full_like(idx, -1)
    targets[:, :-1] = idx[:, 1:]
    return targets


@needs_hf
@pytest.mark.parametrize("kind", ["gpt2", "openai-gpt"])
def test_hf_to_scratchgpt_logits_and_loss_match(kind, tmp_path):
    hf = hf_model(kind)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = GPT.from_pretrained(tmp_path, dtype="float64")
    assert ours.cfg.ln_placement == ("pre" if kind == "gpt2" else "post")
    idx = np.random.default_rng(1).integers(0, TINY["vocab_size"], size=(3, TINY["n_positions"]))
    ref_logits, ref_loss = hf_logits_loss(hf, idx)
    logits, loss = ours.forward(idx, shifted_targets(idx))
    assert rel_err(logits, ref_logits) <= REL_TOL
    assert abs(float(loss) - ref_loss) / abs(ref_loss) <= REL_TOL


@needs_hf
@pytest.mark.parametrize("ln_placement", ["pre", "post"])
def test_scratchgpt_to_hf_logits_match(ln_placement, tmp_path):
    cfg = GPTConfig(vocab_size=TINY["vocab_size"], block_size=TINY["n_positions"], n_layer=2,
                    n_head=2, n_embd=16, ln_placement=ln_placement)
    ours = GPT(cfg, dtype="float64", seed=3)
    rng = np.random.default_rng(4)
    ours.load_params({k: v + rng.normal(0, 0.1, v.shape) for k, v in ours.params.items()})
    ours.save_pretrained(tmp_path)
    cls = (transformers.GPT2LMHeadModel if ln_placement == "pre"
           else transformers.OpenAIGPTLMHeadModel)
    hf = cls.from_pretrained(tmp_path, torch_dtype=torch.float64).eval()
    idx = rng.integers(0, cfg.vocab_size, size=(2, cfg.block_size))
    ref_logits, ref_loss = hf_logits_loss(hf, idx)
    logits, loss = ours.eval().forward(idx, shifted_targets(idx))
    assert rel_err(logits, ref_logits) <= REL_TOL
    assert abs(float(loss) - ref_loss) / abs(ref_loss) <= REL_TOL


# -------------------------------------------------------------- without torch / transformers
@pytest.mark.parametrize("ln_placement", ["pre", "post"])
def test_save_and_load_pretrained_round_trip(ln_placement, tmp_path):
    cfg = GPTConfig.preset("nano", ln_placement=ln_placement, gelu="none" if ln_placement == "pre"
                           else "tanh")
    model = GPT(cfg, dtype="float64", seed=5)
    model.save_pretrained(tmp_path)
    back = GPT.from_pretrained(tmp_path, dtype="float64")
    assert back.cfg == cfg
    for k, v in model.params.items():
        assert np.array_equal(back.params[k], v), k


def test_conv1d_weights_are_transposed_and_head_is_tied():
    cfg = GPTConfig.preset("nano")
    params = GPT(cfg, dtype="float64", seed=6).params
    hf = params_to_hf(params, cfg)
    w = params["h.0.attn.c_attn.weight"]                       # ours: [out, in] = [3C, C]
    assert np.array_equal(hf["transformer.h.0.attn.c_attn.weight"], w.T)
    assert np.array_equal(hf["lm_head.weight"], params["wte.weight"])
    # the original GPT-2 upload: no prefix, mask buffers, no lm_head
    original = {k[len("transformer."):]: v for k, v in hf.items() if k != "lm_head.weight"}
    original["h.0.attn.bias"] = np.tril(np.ones((1, 1, 16, 16)))
    original["h.0.attn.masked_bias"] = np.array(-1e4)
    back = params_from_hf(original, cfg)
    assert set(back) == set(params)
    assert all(np.array_equal(back[k], params[k]) for k in params)


def test_untied_head_is_rejected():
    cfg = GPTConfig.preset("nano")
    hf = params_to_hf(GPT(cfg, dtype="float64").params, cfg)
    hf["lm_head.weight"] = hf["lm_head.weight"] + 1.0
    with pytest.raises(ValueError, match="lm_head"):
        params_from_hf(hf, cfg)


def test_config_mapping():
    gpt1 = config_from_hf({"model_type": "openai-gpt", "vocab_size": 40478, "n_positions": 512,
                           "n_layer": 12, "n_head": 12, "n_embd": 768, "afn": "gelu"})
    assert gpt1 == GPTConfig.preset("gpt1")
    gpt2 = config_from_hf(json.loads(json.dumps(config_to_hf(GPTConfig.preset("gpt2")))))
    assert gpt2 == GPTConfig.preset("gpt2")
    with pytest.raises(ValueError, match="model_type"):
        config_from_hf({"model_type": "llama"})
    with pytest.raises(ValueError, match="activation_function"):
        config_from_hf({"model_type": "gpt2", "vocab_size": 5, "n_positions": 4, "n_layer": 1,
                        "n_head": 1, "n_embd": 4, "activation_function": "relu"})
