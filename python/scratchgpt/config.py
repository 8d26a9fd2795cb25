"""GPTConfig: the shape of a GPT, its presets, and what it costs (parameters, FLOPs)."""
import math
from dataclasses import asdict, dataclass
from typing import Optional, Union

LN_PLACEMENTS = ("pre", "post")
ATTN_KINDS = ("dense", "banded")
GPT3_WINDOW = 256   # GPT-3 does not publish its band width; this is our choice for the presets

# name -> (n_layer, n_head, n_embd); GPT-2 (Radford et al. 2019), GPT-3 (Brown et al. 2020, table 2.1)
_GPT2 = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280),
         "gpt2-xl": (48, 25, 1600)}
# The paper's table pairs some widths with head counts that do not divide them; we keep its
# head size of 128: gpt3-xl has d_model 2048 (16 heads, the paper says 24) and gpt3-13b has
# 40 heads of 128 (d_model 5120, the paper says 5140).
_GPT3 = {"gpt3-small": (12, 12, 768), "gpt3-medium": (24, 16, 1024), "gpt3-large": (24, 16, 1536),
         "gpt3-xl": (24, 16, 2048), "gpt3-2.7b": (32, 32, 2560), "gpt3-6.7b": (32, 32, 4096),
         "gpt3-13b": (40, 40, 5120), "gpt3-175b": (96, 96, 12288)}


def _presets():
    p = {"gpt1": dict(vocab_size=40478, block_size=512, n_layer=12, n_head=12, n_embd=768,
                      ln_placement="post", gelu="tanh")}
    for name, (L, H, C) in _GPT2.items():
        p[name] = dict(vocab_size=50257, block_size=1024, n_layer=L, n_head=H, n_embd=C)
    for name, (L, H, C) in _GPT3.items():
        p[name] = dict(vocab_size=50257, block_size=2048, n_layer=L, n_head=H, n_embd=C,
                       attn_pattern=["dense" if i % 2 == 0 else "banded" for i in range(L)],
                       attn_window=GPT3_WINDOW)
    # CPU presets: nano for tests (a few thousand parameters), mini for the demo (minutes on 2 cores)
    p["nano"] = dict(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16)
    p["mini"] = dict(vocab_size=512, block_size=128, n_layer=4, n_head=4, n_embd=128)
    return p


PRESETS = _presets()


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    ln_placement: str = "pre"                      # "pre" (GPT-2/3) or "post" (GPT-1)
    attn_pattern: Union[str, list] = "dense"       # "dense" | "banded" | one of those per layer
    attn_window: Optional[int] = None              # band width w: t attends to t-w+1 .. t
    ln_eps: float = 1e-5
    gelu: str = "tanh"                             # "tanh" (GPT-1/2/3) or "none" (exact erf)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd: {self.n_embd} is not divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        if self.ln_placement not in LN_PLACEMENTS:
            raise ValueError(f"ln_placement: expected one of {LN_PLACEMENTS}, got {self.ln_placement!r}")
        if self.gelu not in ("tanh", "none"):
            raise ValueError(f"gelu: expected 'tanh' or 'none', got {self.gelu!r}")
        pattern = self.layer_patterns()
        if "banded" in pattern and (not isinstance(self.attn_window, int) or self.attn_window < 1):
            raise ValueError(f"attn_window: banded layers need a positive integer window, "
                             f"got {self.attn_window!r}")

    def layer_patterns(self):
        """The attention kind of each layer, as a list of n_layer strings."""
        p = self.attn_pattern
        pattern = [p] * self.n_layer if isinstance(p, str) else list(p)
        if len(pattern) != self.n_layer or any(k not in ATTN_KINDS for k in pattern):
            raise ValueError(f"attn_pattern: expected one of {ATTN_KINDS} or a list of "
                             f"{self.n_layer} of them, got {p!r}")
        return pattern

    def layer_windows(self):
        """Per layer: None (dense causal) or the band width."""
        return [self.attn_window if k == "banded" else None for k in self.layer_patterns()]

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    def param_shapes(self):
        """Every parameter's stable name and shape, in initialisation order.

        Linear weights are [out, in]. The output projection is tied to wte (no lm_head).
        Post-LN (GPT-1) has no final layer norm.
        """
        C, V = self.n_embd, self.vocab_size
        shapes = {"wte.weight": (V, C), "wpe.weight": (self.block_size, C)}
        for i in range(self.n_layer):
            h = f"h.{i}."
            shapes.update({
                h + "ln_1.weight": (C,), h + "ln_1.bias": (C,),
                h + "attn.c_attn.weight": (3 * C, C), h + "attn.c_attn.bias": (3 * C,),
                h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
                h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
                h + "mlp.c_fc.weight": (4 * C, C), h + "mlp.c_fc.bias": (4 * C,),
                h + "mlp.c_proj.weight": (C, 4 * C), h + "mlp.c_proj.bias": (C,),
            })
        if self.ln_placement == "pre":
            shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
        return shapes

    def num_params(self):
        return sum(math.prod(s) for s in self.param_shapes().values())

    def flops_per_token(self):
        """Training FLOPs per token: 6N for the matmuls (forward 2N, backward 4N; N counts every
        parameter, the tied output projection included) plus attention's QK^T and PV:
        12 * n_embd * (keys per query) per layer, keys = block_size (dense) or the window."""
        keys = sum(self.block_size if w is None else min(w, self.block_size)
                   for w in self.layer_windows())
        return 6 * self.num_params() + 12 * self.n_embd * keys

    @classmethod
    def preset(cls, name, **overrides):
        if name not in PRESETS:
            raise ValueError(f"preset: unknown name {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(**d)
