"""A GRU language model, the RNN baseline the GPT is measured against (`scratchgpt train --arch gru`).

    tokens -> embedding -> GRU layer 1 .. L -> final layer norm -> output projection (tied to wte)
           -> cross-entropy

Each GRU layer is the op in reference/gru.py (csrc/gru.cu on the kernels): H = n_embd hidden
units reading the previous layer's [B, T, n_embd]. Positions are the recurrence's own business:
there is no position table; the lookup reuses the embedding op with a constant zero table.
Training windows start from a zero state, as the GPT's context starts empty; generation carries
the state, so each new token costs one step of each layer and the prompt may be any length.

The model has the GPT's interface where training, checkpoints and sampling touch it (params,
forward, backward, generate, train/eval, load_params), written against the same backends, so
train.py, checkpoint.py and sample.py use it without knowing which architecture they hold.
It trains in fp32 (float32 or float64 on numpy); the gru kernel itself also stores bf16 / fp16
(tests/test_gru_kernel.py), but the model's mixed precision is the GPT's only.
"""
import math
from dataclasses import asdict, dataclass

import numpy as np

from .memory import Estimate, _itemsize, _kernels
from .model import DTYPES, GPT, check_sampling, sample_next
from .ops import get_backend

ARCH = "gru"


@dataclass
class GRUConfig:
    vocab_size: int = 512
    block_size: int = 128          # the training window (and the longest prompt kept)
    n_layer: int = 4
    n_embd: int = 180              # = hidden size H
    ln_eps: float = 1e-5
    arch: str = ARCH

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_embd"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        if self.arch != ARCH:
            raise ValueError(f"arch: expected {ARCH!r}, got {self.arch!r}")

    def param_shapes(self):
        """Names as PyTorch's nn.GRU spells them per layer (gates r, z, n stacked in the rows)."""
        C, V = self.n_embd, self.vocab_size
        shapes = {"wte.weight": (V, C)}
        for i in range(self.n_layer):
            shapes.update({f"gru.{i}.weight_ih": (3 * C, C), f"gru.{i}.weight_hh": (3 * C, C),
                           f"gru.{i}.bias_ih": (3 * C,), f"gru.{i}.bias_hh": (3 * C,)})
        shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
        return shapes

    def num_params(self):
        return sum(math.prod(s) for s in self.param_shapes().values())

    def flops_per_token(self):
        """Training FLOPs per token: 6N for the matmuls (every weight is used once per token)."""
        return 6 * self.num_params()

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


def is_gru(cfg):
    return getattr(cfg, "arch", "gpt") == ARCH


def init_params(cfg, seed=0):
    """float64: PyTorch's GRU initialisation U(-1/sqrt(H), 1/sqrt(H)) for the layers' weights and
    biases, N(0, 0.02) for the embedding, unit / zero final layer norm."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / math.sqrt(cfg.n_embd)
    params = {}
    for name, shape in cfg.param_shapes().items():
        if name == "wte.weight":
            params[name] = rng.normal(0.0, 0.02, size=shape)
        elif name == "ln_f.weight":
            params[name] = np.ones(shape)
        elif name == "ln_f.bias":
            params[name] = np.zeros(shape)
        else:
            params[name] = rng.uniform(-bound, bound, size=shape)
    return params


def gru_op(be):
    """The gru op of a backend: reference.gru on numpy, csrc/gru.cu's wrapper on host / cuda. (Not
    in the backends' op table, which holds the GPT's ops and their mixed-precision wrapping.)"""
    from . import reference
    if be.name == "numpy":
        return reference.gru
    from .kernels import REGISTRY, Runtime
    return REGISTRY["gru"](Runtime(be.name))


class GRULM:
    def __init__(self, cfg, backend="numpy", dtype=None, seed=0, precision="fp32"):
        if not isinstance(cfg, GRUConfig):
            raise TypeError(f"cfg: expected a GRUConfig, got {type(cfg).__name__}")
        if precision != "fp32":
            raise ValueError(f"precision: the GRU model trains in fp32, got {precision!r}")
        dtype = dtype or ("float64" if backend == "numpy" else "float32")
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
        if backend in ("host", "cuda") and dtype != "float32":
            raise ValueError(f"dtype: the {backend} kernels run in float32, got {dtype!r}")
        self.cfg, self.backend, self.precision = cfg, backend, precision
        self.dtype = np.dtype(dtype)
        self.be = get_backend(backend)
        self.gru = gru_op(self.be)
        self.act_dtype = self.dtype
        self.params = {k: self.be.xp.asarray(v.astype(self.dtype))
                       for k, v in init_params(cfg, seed).items()}
        self.params_lp = self.params
        self._zero_pos = self.be.xp.zeros((cfg.block_size, cfg.n_embd), self.dtype)
        self.training = True
        self.dropout_seed, self.dropout_step = seed, 0      # no dropout; kept for checkpoints
        self._caches = None
        self.hidden = None

    # ------------------------------------------------------------- what train / checkpoints use
    def sync_lowp(self):
        self.params_lp = self.params

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    load_params = GPT.load_params        # names and shapes checked against the config

    def _ids(self, idx, name="idx"):
        if not hasattr(idx, "dtype") or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"{name}: expected an integer array, got "
                            f"{getattr(idx, 'dtype', type(idx).__name__)}")
        if idx.ndim != 2:
            raise ValueError(f"{name}: expected shape [B, T], got {tuple(idx.shape)}")
        return self.be.xp.ascontiguousarray(self.be.xp.asarray(idx))

    # ------------------------------------------------------------------------------ forward
    def _layers(self, idx, states):
        """idx [B, T] (T <= block_size) through the embedding and every layer, from the states
        (None: zeros). Returns the last layer's output [B, T, C], the caches, the new states."""
        be, P = self.be, self.params
        if idx.shape[1] > self.cfg.block_size:
            raise ValueError(f"idx: T={idx.shape[1]} exceeds block_size={self.cfg.block_size}")
        x, emb_cache = be.embedding.forward(idx, P["wte.weight"], self._zero_pos)
        caches, new_states = [], []
        for i in range(self.cfg.n_layer):
            g = f"gru.{i}."
            x, c = self.gru.forward(x, states[i], P[g + "weight_ih"], P[g + "weight_hh"],
                                  P[g + "bias_ih"], P[g + "bias_hh"])
            caches.append(c)
            new_states.append(be.xp.ascontiguousarray(x[:, -1]))
        x, ln_cache = be.layernorm.forward(x, P["ln_f.weight"], P["ln_f.bias"], self.cfg.ln_eps)
        return x, (emb_cache, caches, ln_cache), new_states

    def forward(self, idx, targets=None):
        """idx int [B, T] -> (logits [B, T, V], mean loss or None); each row starts from a zero state."""
        be = self.be
        idx = self._ids(idx)
        x, (emb, layers, ln), _ = self._layers(idx, [None] * self.cfg.n_layer)
        self.hidden = x
        logits, head = be.linear.forward(x, self.params["wte.weight"])
        caches = {"embedding": emb, "layers": layers, "ln_f": ln, "lm_head": head}
        loss = None
        if targets is not None:
            loss, caches["xent"] = be.softmax_xent.forward(logits, self._ids(targets, "targets"))
        self._caches = caches
        return logits, loss

    # ----------------------------------------------------------------------------- backward
    def backward(self, loss_weight=1.0, dhidden=None):
        """Gradients of loss_weight * loss with respect to every parameter (keys as params)."""
        be = self.be
        caches, self._caches = self._caches, None
        if caches is None or "xent" not in caches:
            raise RuntimeError("backward: call forward with targets first (one backward per forward)")
        if dhidden is not None:
            raise ValueError("dhidden: the GRU model has no head on its hidden state")
        grads = {}
        dlogits = be.softmax_xent.backward(loss_weight, caches["xent"])
        dx, dwte_head, _ = be.linear.backward(dlogits, caches["lm_head"])
        dx, grads["ln_f.weight"], grads["ln_f.bias"] = be.layernorm.backward(dx, caches["ln_f"])
        for i in reversed(range(self.cfg.n_layer)):
            g = f"gru.{i}."
            dx, _, grads[g + "weight_ih"], grads[g + "weight_hh"], grads[g + "bias_ih"], \
                grads[g + "bias_hh"] = self.gru.backward(dx, caches["layers"][i])
        dwte, _ = be.embedding.backward(dx, caches["embedding"])   # the zero table's gradient: unused
        grads["wte.weight"] = be.residual.forward(dwte_head, dwte)[0]   # tied: both uses
        return {k: grads[k] for k in self.params}

    # ---------------------------------------------------------------------------- inference
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None,
                 use_cache=True):
        """Append max_new_tokens sampled tokens to idx [B, T] (NumPy ints); returns NumPy [B, T+n].
        The prompt runs in windows of block_size carrying the state; then one step per token.
        use_cache is accepted for the GPT's signature: the state is the GRU's cache."""
        idx = np.asarray(idx)
        if idx.ndim == 1:
            idx = idx[None]
        self._ids(idx[:, :1])
        check_sampling(idx, temperature, top_k, top_p)
        rng = np.random.default_rng(seed)
        states = [None] * self.cfg.n_layer
        out, pending = idx, idx
        for _ in range(max_new_tokens):
            for s in range(0, pending.shape[1], self.cfg.block_size):
                chunk = self._ids(np.ascontiguousarray(pending[:, s:s + self.cfg.block_size]))
                x, _, states = self._layers(chunk, states)
            logits, _ = self.be.linear.forward(self.be.xp.ascontiguousarray(x[:, -1]),
                                               self.params["wte.weight"])
            nxt = sample_next(self.be.asnumpy(logits).astype(np.float64), temperature, top_k,
                              top_p, rng)
            pending = nxt[:, None]
            out = np.concatenate([out, pending], axis=1)
        return out


# ---------------------------------------------------------------------------------- memory
def training_estimate(cfg, batch_size, backend="numpy", dtype="float32", grad_accum=1):
    """Peak memory of training (memory.training_estimate's parts, for this model): parameters,
    AdamW moments, gradients, and what a forward keeps per token: per layer the input, xp (3H),
    h (H) and the gates (4H); the logits and their softmax statistics."""
    s = _itemsize(dtype)
    n = cfg.num_params()
    E, C, V, L = batch_size * cfg.block_size, cfg.n_embd, cfg.vocab_size, cfg.n_layer
    acts = E * (L * 9 * C + 3 * C + 2 * V) * s
    work = E * (2 * V + 8 * C) * s + (0 if _kernels(backend) else E * 4 * C * s)
    parts = {"parameters": n * s, "AdamW moments": 2 * n * s,
             "gradients": n * s * (2 if grad_accum > 1 else 1), "activations": acts,
             "working memory": work}
    device = "GPU memory" if backend == "cuda" else "host RAM"
    return Estimate("training", backend, device, parts,
                    host_total=8 * n + n * s if backend == "cuda" else 0)


def sampling_estimate(cfg, num_samples, prompt_tokens, backend="numpy", dtype="float32"):
    """Peak memory of generation: the weights, one block_size window of the prompt through the
    layers (the states are [B, H] per layer), the logits and sampling's float64 arrays."""
    s = _itemsize(dtype)
    n = cfg.num_params()
    T = min(max(prompt_tokens, 1), cfg.block_size)
    B, C, V = num_samples, cfg.n_embd, cfg.vocab_size
    parts = {"parameters": n * s, "initial values (float64)": 8 * n,
             "working memory": B * T * 10 * C * s + B * V * s + 6 * B * V * 8}
    device = "GPU memory" if backend == "cuda" else "host RAM"
    return Estimate("sampling", backend, device, parts)


def gru_config(args, vocab_size=None):
    """The GRUConfig of `scratchgpt train --arch gru`: the preset's vocabulary, context, layers and
    width, with --vocab-size / --block-size / --n-layer / --n-embd applied (the vocabulary is the
    tokenizer's, vocab_size, unless --vocab-size is given). --n-head, --dropout and 16-bit
    precision do not apply to this model and are refused."""
    from .config import PRESETS
    from .errors import UsageError
    for flag, value, ok in (("--n-head", getattr(args, "n_head", None), None),
                            ("--dropout", getattr(args, "dropout", None), 0.0)):
        if value is not None and value != ok:
            raise UsageError(f"{flag} {value} does not apply to the GRU model", "--arch gru",
                             f"no {flag} (the GRU has no attention heads and no dropout)")
    if getattr(args, "precision", "fp32") != "fp32":
        raise UsageError(f"the GRU model trains in fp32, not {args.precision}", "--arch gru",
                         "--precision fp32")
    preset = PRESETS[args.preset]
    fields = {k: getattr(args, k, None) or preset[k]
              for k in ("vocab_size", "block_size", "n_layer", "n_embd")}
    if vocab_size is not None and args.vocab_size is None:
        fields["vocab_size"] = vocab_size
    if vocab_size is not None and fields["vocab_size"] < vocab_size:
        raise UsageError(f"vocabulary {fields['vocab_size']} is smaller than the tokenizer's "
                         f"{vocab_size} ids", "--vocab-size", f"at least {vocab_size}")
    return GRUConfig(**fields)
