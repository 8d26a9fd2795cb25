"""Training checkpoints: one folder per saved step, written atomically.

    RUN/ckpt_000500/
        model.safetensors       the parameters, in the model's dtype (under bf16 / fp16: the
                                fp32 masters; the low-precision copy is derived from them)
        optimizer.safetensors   AdamW's moments ("m.NAME", "v.NAME")
        config.json             the GPTConfig
        state.json              step, precision, optimizer hyper-parameters and step count,
                                dropout RNG state, data sampler RNG state, training
                                arguments, losses (fp16: the loss scaler's state)
        tokenizer.json | chars.json   the tokenizer, so the folder samples on its own

A checkpoint is assembled in a hidden temporary folder and renamed into place in one step,
so an interrupted save (an error, Ctrl-C, kill -9 or a full disk) leaves the previous
checkpoints intact; the newest complete folder is the one `--resume` and `--ckpt` pick.
Old checkpoints are renamed to a hidden name before they are deleted, so a deletion cut short
never leaves a half-deleted folder that looks complete.

Reading one that is truncated, corrupt, or of another model raises BadFileError naming the
file (see errors.py); a missing one MissingFileError.
"""
import json
import os
import re
import shutil

import numpy as np

from .config import GPTConfig
from .errors import BadFileError, MissingFileError, ScratchError, describe_os_error

CKPT_RE = re.compile(r"^ckpt_(\d+)$")
# a checkpoint being replaced by a new save of the same step (see save_checkpoint)
REPLACED_RE = re.compile(r"^ckpt_(\d+)\.old_\d+$")
WRITTEN_BY = "a checkpoint written by scratchgpt train"
MODEL_FILE, OPTIM_FILE, CONFIG_FILE, STATE_FILE = (
    "model.safetensors", "optimizer.safetensors", "config.json", "state.json")


def _to_numpy(model, arrays):
    return {k: np.ascontiguousarray(model.be.asnumpy(v)) for k, v in arrays.items()}


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def save_checkpoint(run_dir, step, model, optimizer=None, state=None, tokenizer=None, keep=2):
    """Write RUN/ckpt_{step:06d} atomically; keep the newest `keep` checkpoints (all if None).
    Returns the folder's path. On any failure (a full disk, no permission, an interrupt) the
    temporary folder is removed and the checkpoints already on disk are untouched; an OSError
    becomes a ScratchError naming the folder."""
    final = os.path.join(run_dir, f"ckpt_{step:06d}")
    tmp = os.path.join(run_dir, f".tmp_ckpt_{step:06d}_{os.getpid()}")
    try:
        os.makedirs(run_dir, exist_ok=True)
        sweep_leftovers(run_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        _write_checkpoint(tmp, step, model, optimizer, state, tokenizer)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        os_error = _as_os_error(e)
        if os_error is not None and describe_os_error(os_error):
            kept = list_checkpoints(run_dir)
            raise ScratchError(
                f"cannot write checkpoint {os.path.basename(final)}: "
                f"{os_error.strerror or os_error}", os_error.filename or run_dir,
                f"{_expected_space(os_error)}; nothing on disk was changed, the newest "
                f"complete checkpoint is {kept[-1] if kept else 'none yet'}") from e
        raise
    if os.path.isdir(final):          # the same step saved again: replace it
        # until the new one is in place the old one is findable as ckpt_N.old_PID
        old = final + f".old_{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    if keep is not None:
        for old in list_checkpoints(run_dir)[:-keep]:
            remove_checkpoint(old)
    return final


def _as_os_error(e):
    """The OSError behind e: e itself, or the "(os error N)" that the Rust writers of
    safetensors and tokenizers put in their messages (they raise their own types)."""
    if isinstance(e, OSError):
        return e
    m = re.search(r"os error (\d+)\)", str(e))
    if m and isinstance(e, Exception):
        n = int(m.group(1))
        return OSError(n, os.strerror(n))
    return None


def _expected_space(e):
    import errno
    return {errno.ENOSPC: "free disk space", errno.EDQUOT: "free disk quota",
            errno.EROFS: "a writable folder", errno.EACCES: "a writable folder",
            errno.EPERM: "a writable folder",
            errno.EFBIG: "a file size the system allows (ulimit -f)"}.get(e.errno, "a writable folder")


def _write_checkpoint(folder, step, model, optimizer, state, tokenizer):
    from safetensors.numpy import save_file
    save_file(_to_numpy(model, model.params), os.path.join(folder, MODEL_FILE))
    state = dict(state or {})
    state.update(step=int(step), dtype=model.dtype.name, precision=model.precision,
                 dropout_seed=int(model.dropout_seed), dropout_step=int(model.dropout_step))
    if optimizer is not None:
        opt = optimizer.state_dict()
        moments = {f"m.{k}": v for k, v in opt["m"].items()}
        moments.update({f"v.{k}": v for k, v in opt["v"].items()})
        save_file(_to_numpy(model, moments), os.path.join(folder, OPTIM_FILE))
        state["optimizer"] = {k: v for k, v in opt.items() if k not in ("m", "v")}
    _write_json(os.path.join(folder, CONFIG_FILE), model.cfg.to_dict())
    if tokenizer is not None:
        tokenizer.save(folder)
    _write_json(os.path.join(folder, STATE_FILE), state)     # last: it marks the folder complete


LEFTOVER_RE = re.compile(r"^(?:\.tmp_ckpt_\d+|\.del_ckpt_\d+|ckpt_(\d+)\.old)_(\d+)$")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                   # someone else's process: alive
        return True
    return True


def sweep_leftovers(run_dir):
    """Remove what saves cut short by kill -9 left behind (temporary folders, old checkpoints
    half deleted, a replaced checkpoint whose successor is in place), when the process that
    wrote them is gone."""
    for name in os.listdir(run_dir):
        m = LEFTOVER_RE.match(name)
        if not m or int(m.group(2)) == os.getpid() or _alive(int(m.group(2))):
            continue
        if m.group(1) is not None and not os.path.isdir(
                os.path.join(run_dir, f"ckpt_{int(m.group(1)):06d}")):
            continue                  # a replaced checkpoint whose successor never arrived
        shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)


def remove_checkpoint(path):
    """Delete a checkpoint folder: first renamed to a hidden name (one atomic step), so a
    deletion cut short leaves nothing that looks like a checkpoint."""
    parent, name = os.path.split(path)
    hidden = os.path.join(parent, f".del_{name}_{os.getpid()}")
    try:
        os.rename(path, hidden)
    except OSError:
        return
    try:
        shutil.rmtree(hidden, ignore_errors=True)
    except BaseException:             # a signal's Interrupted mid-way: finish, then pass it on
        shutil.rmtree(hidden, ignore_errors=True)
        raise


def list_checkpoints(run_dir):
    """Complete checkpoint folders in run_dir, oldest first."""
    if not os.path.isdir(run_dir):
        return []
    found, replaced = {}, {}
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if not os.path.isfile(os.path.join(path, STATE_FILE)):
            continue
        m = CKPT_RE.match(name)
        if m:
            found[int(m.group(1))] = path
            continue
        m = REPLACED_RE.match(name)       # a save of the same step was cut short
        if m:
            replaced[int(m.group(1))] = path
    for step, path in replaced.items():
        found.setdefault(step, path)
    return [found[k] for k in sorted(found)]


def find_checkpoint(path):
    """A checkpoint folder itself, or the newest checkpoint inside a run folder."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, MODEL_FILE)):
        return path
    if not os.path.exists(path):
        raise MissingFileError("no such folder", path, "a run folder or a checkpoint folder")
    found = list_checkpoints(path)
    if not found:
        raise MissingFileError("no checkpoint here", path,
                               f"a checkpoint folder ({MODEL_FILE}) or a run folder holding "
                               f"ckpt_* checkpoints")
    return found[-1]


def _read_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise MissingFileError(f"no {os.path.basename(path)}", path, what) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadFileError(f"not valid JSON ({e})", path, what) from None


def is_hf_folder(path):
    """A Hugging Face model folder: its config.json names a model_type."""
    cfg = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(cfg):
        return False
    data = _read_json(cfg, "a Hugging Face or scratchgpt config.json")
    return isinstance(data, dict) and "model_type" in data


def read_state(ckpt_dir):
    state = _read_json(os.path.join(ckpt_dir, STATE_FILE), WRITTEN_BY)
    if not isinstance(state, dict) or "step" not in state:
        raise BadFileError("not a checkpoint state (no step)", os.path.join(ckpt_dir, STATE_FILE),
                           WRITTEN_BY)
    return state


def read_config(ckpt_dir):
    """The GPTConfig of a checkpoint folder (its config.json)."""
    path = os.path.join(ckpt_dir, CONFIG_FILE)
    data = _read_json(path, WRITTEN_BY)
    try:
        if isinstance(data, dict) and data.get("arch") == "gru":
            from .gru_model import GRUConfig
            return GRUConfig.from_dict(data)
        return GPTConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        raise BadFileError(f"not a model configuration: {e}", path, WRITTEN_BY) from None


def model_config(path):
    """The GPTConfig of what load_model(path) would load, read without loading weights."""
    path = os.path.expanduser(os.fspath(path))
    if is_hf_folder(path):
        from .hf import read_hf_config
        return read_hf_config(path)
    return read_config(find_checkpoint(path))


def check_tensor_file(path, what=WRITTEN_BY):
    """Read a safetensors file's header only (cheap): BadFileError naming the file when it is
    not one, or when it is truncated (the header's byte ranges must cover the file)."""
    from safetensors import SafetensorError, safe_open
    if not os.path.isfile(path):
        raise MissingFileError(f"no {os.path.basename(path)}", path, what)
    try:
        with safe_open(path, "np") as f:
            return list(f.keys())
    except SafetensorError as e:
        raise BadFileError(f"not a readable safetensors file: {e}", path, what) from None


def read_tensors(path, what=WRITTEN_BY):
    """The tensors of a safetensors file; BadFileError naming the file when it is not one."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    check_tensor_file(path, what)
    try:
        return load_file(path)
    except SafetensorError as e:
        raise BadFileError(f"not a readable safetensors file: {e}", path, what) from None


def model_class(cfg):
    """GPT, or the GRU language model for a GRUConfig (gru_model.py)."""
    from .gru_model import GRULM, is_gru
    from .model import GPT
    return GRULM if is_gru(cfg) else GPT


def load_model(path, backend="numpy", dtype=None, precision=None):
    """(model, state, tokenizer or None, folder) from a checkpoint or run folder, or from a
    Hugging Face GPT-2 / GPT-1 folder (state is then empty). precision: the checkpoint's
    (fp32 when it names none) unless given; bf16 / fp16 load the weights as fp32 masters."""
    from .model import GPT
    from .tokenizer import find_tokenizer_files, load_tokenizer
    path = os.path.expanduser(os.fspath(path))
    if is_hf_folder(path):
        model = GPT.from_pretrained(path, backend=backend, dtype=dtype or "float32",
                                    precision=precision or "fp32")
        ckpt, state = path, {}
    else:
        ckpt = find_checkpoint(path)
        state = read_state(ckpt)
        cfg = read_config(ckpt)
        weights = os.path.join(ckpt, MODEL_FILE)
        check_tensor_file(weights)          # before the model is built: a bad file fails fast
        precision = precision or state.get("precision", "fp32")
        if dtype is None:
            dtype = state.get("dtype", "float32") if precision == "fp32" else "float32"
        model = model_class(cfg)(cfg, backend=backend, dtype=dtype, precision=precision)
        tensors = read_tensors(weights)
        quantized = None
        if os.path.isfile(os.path.join(ckpt, "compression.json")):   # scratchgpt compress's
            from .compress import decompress
            tensors, quantized = decompress(ckpt, tensors)
        try:
            model.load_params(tensors)
        except ValueError as e:
            raise BadFileError(f"the weights do not match config.json ({e})", weights,
                               f"the tensors of a {cfg.n_layer}-layer, {cfg.n_embd}-wide model "
                               f"with vocabulary {cfg.vocab_size}") from None
        del tensors
        if quantized:
            from .compress import attach
            attach(model, quantized)
        model.dropout_seed = int(state.get("dropout_seed", 0))
        model.dropout_step = int(state.get("dropout_step", 0))
    tokenizer = load_tokenizer(ckpt) if find_tokenizer_files(ckpt) else None
    if tokenizer is not None and tokenizer.vocab_size > model.cfg.vocab_size:
        raise BadFileError(f"the tokenizer has {tokenizer.vocab_size} ids, more than the model's "
                           f"vocabulary of {model.cfg.vocab_size}", ckpt,
                           "the tokenizer the model was trained with")
    return model, state, tokenizer, ckpt


def load_optimizer(ckpt_dir, optimizer, state):
    """Restore AdamW's moments and step count saved beside the weights."""
    path = os.path.join(ckpt_dir, OPTIM_FILE)
    if not os.path.isfile(path):
        raise MissingFileError(f"no optimizer state ({OPTIM_FILE})", ckpt_dir,
                               "a training checkpoint (fine-tuned and Hugging Face folders "
                               "cannot be resumed)")
    moments = read_tensors(path)
    if "optimizer" not in state:
        raise BadFileError("no optimizer entry in state.json", os.path.join(ckpt_dir, STATE_FILE),
                           WRITTEN_BY)
    opt = dict(state["optimizer"])
    try:
        opt["m"] = {k: moments[f"m.{k}"] for k in optimizer.params}
        opt["v"] = {k: moments[f"v.{k}"] for k in optimizer.params}
    except KeyError as e:
        raise BadFileError(f"no moment {e.args[0]}", path, "the moments of every parameter "
                           "of the model in model.safetensors") from None
    for k, p in optimizer.params.items():
        for which in ("m", "v"):
            if tuple(opt[which][k].shape) != tuple(p.shape):
                raise BadFileError(f"moment {which}.{k} has shape {tuple(opt[which][k].shape)}, "
                                   f"the parameter {tuple(p.shape)}", path,
                                   "the moments of the model in model.safetensors")
    optimizer.load_state_dict(opt)
