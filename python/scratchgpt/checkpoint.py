"""Training checkpoints: one folder per saved step, written atomically.

    RUN/ckpt_000500/
        model.safetensors       the parameters, in the model's dtype
        optimizer.safetensors   AdamW's moments ("m.NAME", "v.NAME")
        config.json             the GPTConfig
        state.json              step, optimizer hyper-parameters and step count, dropout RNG
                                state, data sampler RNG state, training arguments, losses
        tokenizer.json | chars.json   the tokenizer, so the folder samples on its own

A checkpoint is assembled in a hidden temporary folder and renamed into place in one step,
so an interrupted save leaves the previous checkpoints intact; the newest complete folder
is the one `--resume` and `--ckpt` pick.
"""
import json
import os
import re
import shutil

import numpy as np

from .config import GPTConfig

CKPT_RE = re.compile(r"^ckpt_(\d+)$")
MODEL_FILE, OPTIM_FILE, CONFIG_FILE, STATE_FILE = (
    "model.safetensors", "optimizer.safetensors", "config.json", "state.json")


def _to_numpy(model, arrays):
    return {k: np.ascontiguousarray(model.be.asnumpy(v)) for k, v in arrays.items()}


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def save_checkpoint(run_dir, step, model, optimizer=None, state=None, tokenizer=None, keep=2):
    """Write RUN/ckpt_{step:06d} atomically; keep the newest `keep` checkpoints (all if None).
    Returns the folder's path."""
    from safetensors.numpy import save_file
    os.makedirs(run_dir, exist_ok=True)
    final = os.path.join(run_dir, f"ckpt_{step:06d}")
    tmp = os.path.join(run_dir, f".tmp_ckpt_{step:06d}_{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file(_to_numpy(model, model.params), os.path.join(tmp, MODEL_FILE))
    state = dict(state or {})
    state.update(step=int(step), dtype=model.dtype.name, dropout_seed=int(model.dropout_seed),
                 dropout_step=int(model.dropout_step))
    if optimizer is not None:
        opt = optimizer.state_dict()
        moments = {f"m.{k}": v for k, v in opt["m"].items()}
        moments.update({f"v.{k}": v for k, v in opt["v"].items()})
        save_file(_to_numpy(model, moments), os.path.join(tmp, OPTIM_FILE))
        state["optimizer"] = {k: v for k, v in opt.items() if k not in ("m", "v")}
    _write_json(os.path.join(tmp, CONFIG_FILE), model.cfg.to_dict())
    _write_json(os.path.join(tmp, STATE_FILE), state)
    if tokenizer is not None:
        tokenizer.save(tmp)
    if os.path.isdir(final):          # the same step saved again: replace it
        old = final + f".old_{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    if keep is not None:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir):
    """Complete checkpoint folders in run_dir, oldest first."""
    if not os.path.isdir(run_dir):
        return []
    found = []
    for name in os.listdir(run_dir):
        m = CKPT_RE.match(name)
        path = os.path.join(run_dir, name)
        if m and os.path.isfile(os.path.join(path, STATE_FILE)):
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def find_checkpoint(path):
    """A checkpoint folder itself, or the newest checkpoint inside a run folder."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, MODEL_FILE)):
        return path
    found = list_checkpoints(path)
    if not found:
        raise FileNotFoundError(f"ckpt: {path} is neither a checkpoint folder ({MODEL_FILE}) "
                                f"nor a run folder holding ckpt_* checkpoints")
    return found[-1]


def is_hf_folder(path):
    """A Hugging Face model folder: its config.json names a model_type."""
    cfg = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(cfg):
        return False
    with open(cfg) as f:
        return "model_type" in json.load(f)


def read_state(ckpt_dir):
    with open(os.path.join(ckpt_dir, STATE_FILE)) as f:
        return json.load(f)


def load_model(path, backend="numpy", dtype=None):
    """(model, state, tokenizer or None, folder) from a checkpoint or run folder, or from a
    Hugging Face GPT-2 / GPT-1 folder (state is then empty)."""
    from safetensors.numpy import load_file

    from .model import GPT
    from .tokenizer import find_tokenizer_files, load_tokenizer
    path = os.path.expanduser(os.fspath(path))
    if is_hf_folder(path):
        model = GPT.from_pretrained(path, backend=backend, dtype=dtype or "float32")
        ckpt, state = path, {}
    else:
        ckpt = find_checkpoint(path)
        state = read_state(ckpt)
        with open(os.path.join(ckpt, CONFIG_FILE)) as f:
            cfg = GPTConfig.from_dict(json.load(f))
        model = GPT(cfg, backend=backend, dtype=dtype or state.get("dtype", "float32"))
        model.load_params(load_file(os.path.join(ckpt, MODEL_FILE)))
        model.dropout_seed = int(state.get("dropout_seed", 0))
        model.dropout_step = int(state.get("dropout_step", 0))
    tokenizer = load_tokenizer(ckpt) if find_tokenizer_files(ckpt) else None
    return model, state, tokenizer, ckpt


def load_optimizer(ckpt_dir, optimizer, state):
    """Restore AdamW's moments and step count saved beside the weights."""
    from safetensors.numpy import load_file
    path = os.path.join(ckpt_dir, OPTIM_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"resume: {ckpt_dir} holds no optimizer state ({OPTIM_FILE})")
    moments = load_file(path)
    opt = dict(state["optimizer"])
    opt["m"] = {k: moments[f"m.{k}"] for k in optimizer.params}
    opt["v"] = {k: moments[f"v.{k}"] for k in optimizer.params}
    optimizer.load_state_dict(opt)
