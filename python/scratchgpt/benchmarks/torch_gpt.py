"""The same GPT written plainly in PyTorch: the baseline our NumPy model and kernels are
measured against, on the CPU and on the GPU.

Same architecture as scratchgpt/model.py (pre-LN GPT-2: tied embeddings, tanh GELU, causal
attention) and the same parameter names and layouts ([out, in] linear weights), so one
state dict loads into both and the losses agree to rounding. Autograd does the backward.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # [B, T, C] -> [B, H, T, D]
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.ln_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.ln_eps)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TorchGPT(nn.Module):
    """Pre-LN GPT with dense causal attention; dropout off (benchmarks measure compute)."""

    def __init__(self, cfg):
        super().__init__()
        if cfg.ln_placement != "pre" or any(w is not None for w in cfg.layer_windows()):
            raise ValueError("cfg: TorchGPT covers pre-LN models with dense attention "
                             f"(got ln_placement={cfg.ln_placement!r}, "
                             f"attn_pattern={cfg.attn_pattern!r})")
        if cfg.gelu != "tanh":
            raise ValueError(f"cfg: TorchGPT uses the tanh GELU, got gelu={cfg.gelu!r}")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.ln_eps)
        self._init_weights()

    def _init_weights(self):
        # GPT-2's initialisation, as model.init_params (the benchmarks usually load our weights)
        proj_std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if p.ndim == 2:
                nn.init.normal_(p, 0.0, proj_std if name.endswith("c_proj.weight") else 0.02)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets=None):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe.weight[:T]
        for block in self.h:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)          # tied output projection
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss

    def load_numpy(self, params):
        """Copy a scratchgpt parameter dict (name -> NumPy array) into this model."""
        own = dict(self.named_parameters())
        if set(own) != set(params):
            raise ValueError(f"params: names differ (missing {sorted(set(own) - set(params))[:5]}, "
                             f"unexpected {sorted(set(params) - set(own))[:5]})")
        with torch.no_grad():
            for k, p in own.items():
                p.copy_(torch.from_numpy(params[k]).to(p.dtype))
        return self


def make_adamw(model, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=None):
    """torch AdamW with the same decay rule as scratchgpt.optim (matrices decay, vectors not)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)
