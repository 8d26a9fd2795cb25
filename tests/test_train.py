"""`scratchgpt train`: loss goes down, the JSON summary, bit-identical resume, atomic
checkpoints, and a diverging run stopping with its last good checkpoint kept."""
import json
import os

import numpy as np
import pytest
from corpus import TEXT
from safetensors.numpy import load_file

import scratchgpt.checkpoint as checkpoint
from scratchgpt.cli import main
from scratchgpt.checkpoint import find_checkpoint, list_checkpoints, load_model
from scratchgpt.model import GPT
from scratchgpt import memory
from scratchgpt.config import PRESETS
from scratchgpt.errors import NotEnoughMemory
from scratchgpt.train import (SMALL_PRESET_BPE_VOCAB, TrainingDiverged, build_config, lr_at,
                              parse_args, resolve_backend, tokenizer_vocab_size, train)


def nano_args(text_file, out, *extra):
    return parse_args(["--preset", "nano", "--data", str(text_file), "--tokenizer", "char",
                       "--out", str(out), "--batch-size", "4", "--lr", "1e-2",
                       "--warmup-steps", "2", "--eval-interval", "5", "--eval-iters", "2",
                       "--ckpt-interval", "3", "--no-progress", "--seed", "7", *extra])


def test_train_cli_reduces_loss_and_prints_json_summary(text_file, tmp_path, capsys):
    rc = main(["train", "--preset", "nano", "--data", text_file, "--tokenizer", "char",
               "--out", str(tmp_path), "--max-steps", "30", "--batch-size", "8", "--lr", "1e-2",
               "--warmup-steps", "3", "--eval-interval", "10", "--ckpt-interval", "10",
               "--no-progress", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 30 and summary["backend"] == "numpy"
    assert summary["tokens_per_s"] > 0
    # 17 equally likely characters at the start: log(17) ~ 2.8; the text is very repetitive
    assert summary["first_loss"] > 2.5 and summary["final_val_loss"] < 0.8 * summary["first_loss"]
    assert os.path.isfile(tmp_path / "loss.png")
    assert os.path.basename(find_checkpoint(tmp_path)) == "ckpt_000030"
    assert len(list_checkpoints(tmp_path)) == 2               # --keep 2


def backend_or_skip(name):
    from scratchgpt.ops import get_backend
    try:
        get_backend(name)
    except Exception as e:          # not built or no device here: say why
        pytest.skip(f"backend {name!r} unavailable: {e}")
    return name


@pytest.mark.parametrize("backend", ["numpy", "host"])
def test_resume_is_bit_identical(text_file, tmp_path, backend):
    backend_or_skip(backend)
    # dropout and gradient accumulation on: their RNG state and summation order must survive
    extra = ["--dropout", "0.1", "--grad-accum", "2", "--lr-decay-steps", "8",
             "--backend", backend]
    train(nano_args(text_file, tmp_path / "once", "--max-steps", "8", *extra))
    train(nano_args(text_file, tmp_path / "split", "--max-steps", "4", *extra))
    summary = train(nano_args(text_file, "unused", "--resume", str(tmp_path / "split"),
                              "--max-steps", "8"))
    assert summary["steps_run"] == 4
    once, split = find_checkpoint(tmp_path / "once"), find_checkpoint(tmp_path / "split")
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(os.path.join(once, name)), load_file(os.path.join(split, name))
        assert set(a) == set(b)
        for k in a:
            assert np.array_equal(a[k], b[k]), (name, k)
    sa, sb = (json.load(open(os.path.join(d, "state.json"))) for d in (once, split))
    assert sa["data_rng"] == sb["data_rng"] and sa["dropout_step"] == sb["dropout_step"] == 16


def test_interrupted_save_keeps_the_previous_checkpoint(text_file, tmp_path, monkeypatch):
    train(nano_args(text_file, tmp_path, "--max-steps", "3"))
    good = find_checkpoint(tmp_path)
    before = load_file(os.path.join(good, "model.safetensors"))
    calls = {"n": 0}
    real_save = checkpoint.save_checkpoint

    def dies_midway(*args, **kwargs):
        # write part of the next checkpoint, then fail as a killed process would
        import safetensors.numpy
        real = safetensors.numpy.save_file

        def partial(tensors, path, *a, **k):
            calls["n"] += 1
            real(tensors, path, *a, **k)
            raise KeyboardInterrupt
        monkeypatch.setattr(safetensors.numpy, "save_file", partial)
        try:
            return real_save(*args, **kwargs)
        finally:
            monkeypatch.setattr(safetensors.numpy, "save_file", real)

    monkeypatch.setattr("scratchgpt.train.save_checkpoint", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        train(nano_args(text_file, "unused", "--resume", str(tmp_path), "--max-steps", "6"))
    assert calls["n"] == 1
    assert find_checkpoint(tmp_path) == good                  # the half-written one is hidden
    model, state, tok, _ = load_model(tmp_path)
    assert state["step"] == 3 and tok is not None
    for k, v in before.items():
        assert np.array_equal(model.params[k], v)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(text_file, tmp_path, monkeypatch):
    real_forward = GPT.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None):
        logits, loss = real_forward(self, idx, targets)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] == 5:
                loss = loss * np.nan
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)
    with pytest.raises(TrainingDiverged, match=r"not finite .* step 5.*ckpt_000003"):
        train(nano_args(text_file, tmp_path, "--max-steps", "10"))
    assert os.path.basename(find_checkpoint(tmp_path)) == "ckpt_000003"


def test_lr_schedule_warmup_then_cosine():
    args = parse_args(["--lr", "1.0", "--min-lr", "0.1", "--warmup-steps", "10",
                       "--lr-decay-steps", "110"])
    assert lr_at(0, args) == pytest.approx(0.1)
    assert lr_at(9, args) == pytest.approx(1.0)
    assert lr_at(60, args) == pytest.approx(0.55)            # half-way down the cosine
    assert lr_at(110, args) == pytest.approx(0.1) and lr_at(500, args) == pytest.approx(0.1)


def test_backend_auto_follows_the_cuda_backend_status():
    from scratchgpt.kernels import backend_status
    expected = "cuda" if backend_status("cuda")["available"] else "numpy"
    assert resolve_backend("auto") == expected
    assert resolve_backend("numpy") == "numpy"


class _ReachedTheData(Exception):
    pass


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_has_a_tokenizer_that_fits_or_is_refused_up_front(preset, tmp_path,
                                                                       monkeypatch):
    """With the default BPE every preset asks for a vocabulary the BPE can have (nano's 32
    becomes SMALL_PRESET_BPE_VOCAB), and its memory is checked first: on a 24 GiB machine it
    fits and goes on to read the data, or NotEnoughMemory says so before any data is read."""
    args = parse_args(["--preset", preset, "--out", str(tmp_path / "run")])
    vocab = tokenizer_vocab_size(args)
    assert vocab == (SMALL_PRESET_BPE_VOCAB if PRESETS[preset]["vocab_size"] < 257
                     else PRESETS[preset]["vocab_size"])
    cfg = build_config(args, vocab)
    assert cfg.vocab_size == vocab

    def reached(*a, **k):
        raise _ReachedTheData

    monkeypatch.setattr("scratchgpt.train.prepare_run_data", reached)
    monkeypatch.setattr(memory, "host_available", lambda: (24 * 2 ** 30, "by a test"))
    if memory.shortfall(memory.training_estimate(cfg, 16, "numpy")) is None:
        with pytest.raises(_ReachedTheData):
            train(args)
    else:
        with pytest.raises(NotEnoughMemory, match=f"--preset {preset} --batch-size 16"):
            train(args)
        assert not os.path.exists(tmp_path / "run")     # refused before anything is written


def test_nano_with_the_default_bpe_trains(text_file, tmp_path):
    summary = train(parse_args(["--preset", "nano", "--data", text_file, "--out",
                                str(tmp_path), "--max-steps", "3", "--no-progress",
                                "--eval-iters", "1"]))
    model, _, tok, _ = load_model(tmp_path)
    assert tok.kind == "bpe" and 257 <= tok.vocab_size <= SMALL_PRESET_BPE_VOCAB
    assert model.cfg.vocab_size == tok.vocab_size and summary["steps_run"] == 3


@pytest.mark.slow
def test_the_nano_preset_trains_on_the_default_corpus(tmp_path):
    """The command of the issue, verbatim: `scratchgpt train --preset nano --max-steps 5`."""
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-c", "import sys; from scratchgpt.cli import main; "
                        "sys.exit(main())", "train", "--preset", "nano", "--max-steps", "5",
                        "--out", str(tmp_path / "nano"), "--no-progress"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    model, state, tok, _ = load_model(tmp_path / "nano")
    assert state["step"] == 5 and model.cfg.vocab_size == tok.vocab_size == SMALL_PRESET_BPE_VOCAB


def test_train_on_llmc_shards_folder(text_file, tmp_path):
    from scratchgpt.data import prepare_data
    from scratchgpt.tokenizer import CharTokenizer
    tok = CharTokenizer.train(TEXT)
    prepare_data([TEXT], tok, tmp_path / "shards")
    tok.save(tmp_path / "shards")
    args = parse_args(["--preset", "nano", "--data", str(tmp_path / "shards"), "--out",
                       str(tmp_path / "run"), "--max-steps", "3", "--no-progress",
                       "--eval-iters", "1"])
    summary = train(args)
    model, _, loaded_tok, _ = load_model(tmp_path / "run")
    assert loaded_tok.chars == tok.chars                  # the shards' tokenizer travels along
    assert model.cfg.vocab_size == tok.vocab_size         # without --vocab-size: the tokenizer's
    assert summary["steps_run"] == 3 and np.isfinite(summary["final_val_loss"])


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")   # clipping an inf norm
def test_non_finite_gradient_stops_before_any_checkpoint_holds_it(text_file, tmp_path,
                                                                  monkeypatch):
    real_backward = GPT.backward
    calls = {"n": 0}

    def backward(self, *args, **kwargs):
        grads = real_backward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 6:                                  # step 6 ends on a checkpoint
            grads["h.0.mlp.c_fc.weight"][0, 0] = np.inf
        return grads

    monkeypatch.setattr(GPT, "backward", backward)
    with pytest.raises(TrainingDiverged, match=r"step 6.*ckpt_000003"):
        train(nano_args(text_file, tmp_path, "--max-steps", "10"))
    model, state, _, _ = load_model(tmp_path)
    assert state["step"] == 3
    assert all(np.isfinite(v).all() for v in model.params.values())
