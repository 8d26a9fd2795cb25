"""One small GPT training step and a few generated tokens on the cuda backend, with both attention
versions and dropout on, then one step in bf16 and in fp16 (the tensor-core kernels): the workload
compute-sanitizer (memcheck, racecheck) watches in
benchmarks/device_check.sh. Every kernel runs at least once."""
import os

import numpy as np

from scratchgpt import GPT, GPTConfig
from scratchgpt.optim import AdamW

cfg = GPTConfig.preset("nano", attn_pattern=["dense", "banded"], attn_window=5, dropout=0.1)
rng = np.random.default_rng(0)
idx = rng.integers(0, cfg.vocab_size, (2, 13))
targets = rng.integers(0, cfg.vocab_size, (2, 13))
targets[0, 3] = -1
for version in ("flash", "materialized"):
    os.environ["SCRATCHGPT_ATTENTION"] = version      # read when the backend is built
    model = GPT(cfg, backend="cuda", dtype="float32", seed=0)
    opt = AdamW(model.params, model.be, lr=1e-3)
    _, loss = model.forward(idx, targets)
    opt.step(model.backward(), max_grad_norm=1.0)
    tokens = model.generate(idx[:, :4], 6, temperature=0)
    print(f"{version}: loss {float(loss):.4f}, generated {tokens[0, 4:].tolist()}")
# the 16-bit kernels (tensor-core linear and flash attention: cp.async, ldmatrix, mma.sync),
# head width 32 so that attention takes the tensor-core path
os.environ["SCRATCHGPT_ATTENTION"] = "flash"
cfg16 = GPTConfig.preset("nano", n_embd=64, n_head=2, dropout=0.1)
for precision in ("bf16", "fp16"):
    model = GPT(cfg16, backend="cuda", precision=precision, seed=0)
    opt = AdamW(model.params, model.be, lr=1e-3)
    _, loss = model.forward(idx, targets)
    opt.step(model.backward(), max_grad_norm=1.0)
    model.sync_lowp()
    tokens = model.generate(idx[:, :4], 6, temperature=0)
    print(f"{precision}: loss {float(loss):.4f}, generated {tokens[0, 4:].tolist()}")
print("sanitizer step done")
