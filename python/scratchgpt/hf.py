"""Hugging Face interop: GPT-2 (GPT2LMHeadModel) and GPT-1 (OpenAIGPTLMHeadModel) folders of
config.json + model.safetensors, read and written without torch, transformers or a network.

Name and layout differences handled here:
- Hugging Face keeps GPT-1/2's Conv1D layers, whose weights are [in, out]; ours are [out, in]
  (as nn.Linear), so every c_attn / c_proj / c_fc weight is transposed both ways.
- GPT-1 names its embeddings tokens_embed / positions_embed; GPT-2 wte / wpe. Keys may carry
  the "transformer." prefix (save_pretrained) or not (the original GPT-2 upload).
- The output projection is tied to the token embedding: lm_head.weight is written for
  readers that expect it, and on reading must equal the embedding (an untied head is an error).
- GPT-2's causal-mask buffers (attn.bias, attn.masked_bias) in old checkpoints are ignored.
- Activations: GPT-2's "gelu_new" / "gelu_pytorch_tanh" and GPT-1's "gelu" (which transformers
  maps to gelu_new) are our tanh GELU; GPT-2's "gelu" is the exact erf form.
"""
import json
import os

import numpy as np

from .config import GPTConfig
from .errors import BadFileError, MissingFileError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GPT2_ACT = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}
GPT1_ACT = {"gelu": "tanh"}                  # transformers' ACT_FNS["gelu"] is gelu_new
GPT1_RENAME = {"tokens_embed.weight": "wte.weight", "positions_embed.weight": "wpe.weight"}


HF_FOLDER = "a Hugging Face GPT-2 / GPT-1 model folder"


def _read_config(path):
    cfg_path = os.path.join(path, CONFIG)
    if not os.path.isfile(cfg_path):
        raise MissingFileError(f"no {CONFIG}", path, HF_FOLDER)
    try:
        with open(cfg_path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadFileError(f"not valid JSON ({e})", cfg_path, HF_FOLDER) from None


def read_hf_config(path):
    """The GPTConfig of a Hugging Face folder; BadFileError naming its config.json when the
    file does not describe a GPT-2 / GPT-1 this package runs."""
    hf = _read_config(path)
    try:
        return config_from_hf(hf)
    except (KeyError, TypeError, ValueError) as e:
        what = f"missing key {e}" if isinstance(e, KeyError) else str(e)
        raise BadFileError(f"unsupported configuration: {what}", os.path.join(path, CONFIG),
                           HF_FOLDER) from None


def config_from_hf(hf):
    """GPTConfig from a Hugging Face config.json dict (model_type gpt2 or openai-gpt)."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in GPT2_ACT:
            raise ValueError(f"config.json: activation_function {act!r} is not one of "
                             f"{sorted(GPT2_ACT)}")
        n_inner = hf.get("n_inner")
        if n_inner not in (None, 4 * hf["n_embd"]):
            raise ValueError(f"config.json: n_inner={n_inner}; this GPT's MLP is 4 * n_embd wide")
        for flag, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                         ("add_cross_attention", False)):
            if hf.get(flag, ok) != ok:
                raise ValueError(f"config.json: {flag}={hf[flag]} is not supported")
        return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"],
                         n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                         ln_eps=hf.get("layer_norm_epsilon", 1e-5), gelu=GPT2_ACT[act])
    if kind == "openai-gpt":
        act = hf.get("afn", "gelu")
        if act not in GPT1_ACT:
            raise ValueError(f"config.json: afn {act!r} is not supported (expected 'gelu')")
        return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"],
                         n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                         ln_eps=hf.get("layer_norm_epsilon", 1e-5), ln_placement="post",
                         gelu=GPT1_ACT[act])
    raise ValueError(f"config.json: model_type {kind!r} is not supported "
                     "(expected 'gpt2' or 'openai-gpt')")


def config_to_hf(cfg):
    """A Hugging Face config.json dict for a GPTConfig (dense attention only)."""
    if any(w is not None for w in cfg.layer_windows()):
        raise ValueError("save_pretrained: banded attention has no Hugging Face GPT-2 / GPT-1 "
                         "equivalent")
    common = dict(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_layer=cfg.n_layer,
                  n_head=cfg.n_head, n_embd=cfg.n_embd, layer_norm_epsilon=cfg.ln_eps,
                  resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
                  initializer_range=0.02, tie_word_embeddings=True)
    if cfg.ln_placement == "post":
        if cfg.gelu != "tanh":
            raise ValueError("save_pretrained: GPT-1 (post-LN) folders need the tanh GELU")
        return dict(common, model_type="openai-gpt", architectures=["OpenAIGPTLMHeadModel"],
                    afn="gelu", n_ctx=cfg.block_size)
    act = "gelu_new" if cfg.gelu == "tanh" else "gelu"
    return dict(common, model_type="gpt2", architectures=["GPT2LMHeadModel"],
                activation_function=act, n_ctx=cfg.block_size, n_inner=None,
                bos_token_id=cfg.vocab_size - 1, eos_token_id=cfg.vocab_size - 1)


def params_from_hf(tensors, cfg):
    """Our parameter dict from Hugging Face tensors (name -> NumPy)."""
    out, lm_head = {}, None
    for key, value in tensors.items():
        name = key[len("transformer."):] if key.startswith("transformer.") else key
        if name == "lm_head.weight":
            lm_head = value
            continue
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue                                   # causal-mask buffers, not parameters
        name = GPT1_RENAME.get(name, name)
        if name.endswith(CONV1D):
            value = value.T
        out[name] = np.ascontiguousarray(value)
    if lm_head is not None and "wte.weight" not in out:
        out["wte.weight"] = lm_head                    # tied: the head stored, the embedding not
    elif lm_head is not None and not np.array_equal(lm_head, out["wte.weight"]):
        raise ValueError("model.safetensors: lm_head.weight differs from the token embedding; "
                         "this GPT ties them")
    if cfg.ln_placement == "post":                     # GPT-1 has no final layer norm
        out.pop("ln_f.weight", None)
        out.pop("ln_f.bias", None)
    return out


def params_to_hf(params, cfg):
    """Hugging Face tensors (with the transformer. prefix) from our parameter dict."""
    gpt1 = cfg.ln_placement == "post"
    back = {v: k for k, v in GPT1_RENAME.items()}
    out = {}
    for name, value in params.items():
        value = np.asarray(value)
        if name.endswith(CONV1D):
            value = value.T
        hf_name = back.get(name, name) if gpt1 else name
        out["transformer." + hf_name] = np.ascontiguousarray(value)
    out["lm_head.weight"] = out["transformer." + ("tokens_embed.weight" if gpt1 else "wte.weight")]
    return out


def from_pretrained(path, backend="numpy", dtype="float64"):
    """A GPT from a Hugging Face GPT-2 / GPT-1 folder (config.json + model.safetensors)."""
    from .checkpoint import check_tensor_file, read_tensors
    from .model import GPT
    path = os.path.expanduser(os.fspath(path))
    cfg = read_hf_config(path)
    weights = os.path.join(path, WEIGHTS)
    if not os.path.isfile(weights):
        raise MissingFileError(f"no {WEIGHTS}", path, "convert pytorch_model.bin with "
                               "transformers' save_pretrained(..., safe_serialization=True)")
    check_tensor_file(weights, HF_FOLDER)
    model = GPT(cfg, backend=backend, dtype=dtype)
    try:
        model.load_params(params_from_hf(read_tensors(weights, HF_FOLDER), cfg))
    except ValueError as e:
        raise BadFileError(f"the weights do not match config.json ({e})", weights,
                           HF_FOLDER) from None
    return model


def save_pretrained(model, path):
    """Write model as a Hugging Face folder that GPT2LMHeadModel / OpenAIGPTLMHeadModel (and
    from_pretrained here) read: config.json + model.safetensors in the model's dtype."""
    from safetensors.numpy import save_file
    path = os.path.expanduser(os.fspath(path))
    os.makedirs(path, exist_ok=True)
    hf_cfg = config_to_hf(model.cfg)
    hf_cfg["torch_dtype"] = model.dtype.name
    tensors = params_to_hf({k: model.be.asnumpy(v) for k, v in model.params.items()}, model.cfg)
    # lm_head shares memory with the embedding; safetensors wants distinct buffers
    tensors["lm_head.weight"] = tensors["lm_head.weight"].copy()
    tmp = os.path.join(path, WEIGHTS + ".tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(path, WEIGHTS))
    with open(os.path.join(path, CONFIG + ".tmp"), "w") as f:
        json.dump(hf_cfg, f, indent=2)
    os.replace(os.path.join(path, CONFIG + ".tmp"), os.path.join(path, CONFIG))
