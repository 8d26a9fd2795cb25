"""The GRU language model: its gradient (finite differences through the whole model, float64),
its generation with a carried state, and `scratchgpt train --arch gru` + `sample` end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from scratchgpt.gradcheck import MODEL_TOLERANCE, compare, numeric_grad
from scratchgpt.gru_model import GRUConfig, GRULM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(**kw):
    return GRUConfig(**{"vocab_size": 11, "block_size": 6, "n_layer": 2, "n_embd": 5, **kw})


def test_model_gradients_match_finite_differences():
    cfg = _tiny()
    model = GRULM(cfg, dtype="float64", seed=1)
    rng = np.random.default_rng(2)
    for k, p in model.params.items():      # layer norm off its init so its gradient is generic
        if k.startswith("ln_f"):
            p += 0.1 * rng.standard_normal(p.shape)
    idx = rng.integers(0, cfg.vocab_size, (2, 6))
    targets = rng.integers(0, cfg.vocab_size, (2, 6))
    targets[1, 2] = -1
    loss = lambda: float(model.forward(idx, targets)[1])                    # noqa: E731
    loss()
    grads = model.backward()
    assert set(grads) == set(model.params)
    for name, p in model.params.items():
        _, rel = compare(grads[name], numeric_grad(loss, p))
        assert rel < MODEL_TOLERANCE, f"{name}: relative error {rel:.2e}"


def test_generation_carries_the_state():
    """Greedy generation one token at a time equals the argmax of full forwards over the prefix
    (the state carried across steps is the state a whole-sequence forward reaches)."""
    cfg = _tiny(block_size=16)
    model = GRULM(cfg, dtype="float64", seed=3)
    prompt = np.array([[1, 4, 2], [0, 7, 7]])
    out = model.generate(prompt, 5, temperature=0)
    seq = prompt
    for _ in range(5):
        logits, _ = model.forward(seq)
        seq = np.concatenate([seq, logits[:, -1].argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(out, seq)
    # a prompt longer than the window runs in windows of block_size, the state carried across
    windowed = GRULM(_tiny(block_size=7), dtype="float64", seed=3)
    whole = GRULM(_tiny(block_size=21), dtype="float64", seed=3)
    long = np.random.default_rng(0).integers(0, 11, (1, 21))
    assert windowed.generate(long, 1, temperature=0)[0, -1] == whole.forward(long)[0][0, -1].argmax()


def test_host_backend_matches_numpy():
    pytest.importorskip("scratchgpt.kernels._host", reason="the host kernel module is not built")
    cfg = _tiny()
    rng = np.random.default_rng(4)
    idx, targets = rng.integers(0, 11, (3, 6)), rng.integers(0, 11, (3, 6))
    ref, host = GRULM(cfg, "numpy", "float64", seed=5), GRULM(cfg, "host", "float32", seed=5)
    _, l_ref = ref.forward(idx, targets)
    _, l_host = host.forward(idx, targets)
    assert abs(float(l_host) - float(l_ref)) < 1e-5 * abs(float(l_ref))
    g_ref, g_host = ref.backward(), host.backward()
    for k in g_ref:
        err = np.linalg.norm(g_host[k] - g_ref[k]) / np.linalg.norm(g_ref[k])
        assert err < 1e-4, f"{k}: {err:.2e}"


def test_bad_config_and_arguments():
    with pytest.raises(ValueError, match="n_embd"):
        GRUConfig(n_embd=0)
    with pytest.raises(ValueError, match="precision"):
        GRULM(_tiny(), precision="bf16")


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "python"), "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "scratchgpt.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


GRU_RUN = ("--arch", "gru", "--tokenizer", "char", "--preset", "nano", "--n-layer", "1",
           "--n-embd", "12", "--block-size", "16", "--batch-size", "4", "--eval-interval", "15",
           "--lr", "1e-2", "--lr-decay-steps", "30", "--backend", "numpy", "--no-progress")


def test_train_and_sample_cli(tmp_path, text_file):
    """Train, sample, and resume: 15 steps + --resume to 30 gives the 30-step run's weights."""
    from safetensors.numpy import load_file
    run = str(tmp_path / "gru")
    r = _cli("train", *GRU_RUN, "--data", str(text_file), "--max-steps", "30", "--out", run,
             "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["final_val_loss"] < summary["first_loss"] - 0.3
    assert json.load(open(os.path.join(summary["checkpoint"], "config.json")))["arch"] == "gru"
    r = _cli("sample", "--ckpt", run, "--prompt", "th", "--max-new-tokens", "40", "--seed", "0",
             "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    sample = json.loads(r.stdout)["samples"][0]
    assert len(sample) == 40
    half = str(tmp_path / "half")
    for args in (("--data", str(text_file), "--max-steps", "15", "--out", half),
                 ("--max-steps", "30", "--resume", half)):
        r = _cli("train", *(GRU_RUN if args[0] == "--data" else ("--no-progress",)), *args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    a = load_file(os.path.join(run, "ckpt_000030", "model.safetensors"))
    b = load_file(os.path.join(half, "ckpt_000030", "model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("good\t1\nbad\t0\n" * 5)
    r = _cli("finetune", "--ckpt", run, "--data", str(tsv), "--out", str(tmp_path / "ft"), cwd=tmp_path)
    assert r.returncode == 2 and "fine-tuning takes a GPT" in r.stderr, r.stderr
    r = _cli("train", "--arch", "gru", "--n-head", "2", "--data", str(text_file), "--out", run,
             cwd=tmp_path)
    assert r.returncode == 2 and "--n-head 2 does not apply to the GRU model" in r.stderr
