"""The GPT: forward and backward composed from the ops, no autograd.

Read top to bottom: GPT.forward walks embedding -> blocks -> (final LN) -> tied output
projection -> cross-entropy; GPT.backward walks the same path in reverse, calling each op's
hand-written backward. The backend (ops.py) decides which implementation of each op runs.

Block (pre-LN, GPT-2/3):             Block (post-LN, GPT-1):
    x = x + drop(proj(attn(LN1(x))))     x = LN1(x + drop(proj(attn(x))))
    x = x + drop(mlp(LN2(x)))            x = LN2(x + drop(mlp(x)))
mlp(h) = c_proj(gelu(c_fc(h)))

What a forward keeps for the backward, per layer: the input of each layer norm with its
mean and rstd, the inputs of the four linears (LN outputs, the attention output, the GELU
output), the GELU input and its tanh, q, k, v and the attention probabilities (B*H*T*T; the reference
materialises them, a fused kernel keeps only the log-sum-exp), and the dropout masks.
Model-wide: the ids, the final hidden state, the logits and the per-row log-sum-exp.

Precision (precision.py, docs/gradients/mixed_precision.md): with precision="bf16" or "fp16"
`params` holds the fp32 master weights the optimizer updates, and the forward and backward
read `params_lp`, their copy rounded to bfloat16 / float16 (refreshed by sync_lowp()). The
backend's ops then store every activation and activation gradient in that type, computing in
fp32 inside; backward() still returns fp32 parameter gradients. With "fp32" (the default)
params_lp is params, and nothing is rounded.
"""
import math
import warnings

import numpy as np

from .config import GPTConfig
from .ops import get_backend
from .precision import check_precision, check_supported, master_dtype, storage_dtype, working_copy

DTYPES = ("float64", "float32")


def init_params(cfg, seed=0):
    """GPT-2 initialisation in float64: N(0, 0.02) for matrices, the residual projections
    scaled by 1/sqrt(2 n_layer), zero biases, unit layer-norm weights."""
    rng = np.random.default_rng(seed)
    proj_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    params = {}
    for name, shape in cfg.param_shapes().items():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            params[name] = np.ones(shape)
        elif name.endswith(".bias"):
            params[name] = np.zeros(shape)
        else:
            std = proj_std if name.endswith("c_proj.weight") else 0.02
            params[name] = rng.normal(0.0, std, size=shape)
    return params


class GPT:
    def __init__(self, cfg, backend="numpy", dtype=None, seed=0, precision="fp32"):
        """dtype: of the parameters (float64 by default, float32 on the kernels); with
        precision bf16 / fp16 the parameters are the fp32 masters (dtype float32 or None)."""
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"cfg: expected a GPTConfig, got {type(cfg).__name__}")
        dtype = master_dtype(check_precision(precision), dtype)
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
        if backend in ("host", "cuda") and dtype != "float32":
            raise ValueError(f"dtype: the {backend} kernels run in float32, got {dtype!r}")
        self.cfg = cfg
        self.backend = backend
        self.dtype = np.dtype(dtype)                # the parameters' (the masters')
        self.windows = cfg.layer_windows()
        self._use_precision(precision)
        self.params = {k: self.be.xp.asarray(v.astype(self.dtype))
                       for k, v in init_params(cfg, seed).items()}
        self.sync_lowp()
        self.training = True
        self.dropout_seed = seed        # dropout masks: Philox keyed by (seed, step, site)
        self.dropout_step = 0           # advanced by each training forward that drops
        self._caches = None
        self.hidden = None              # final hidden state [B, T, C] of the last forward

    # ----------------------------------------------------------------------------- precision
    def _use_precision(self, precision):
        """The ops for `precision` (storing activations in bf16 / fp16, or not at all)."""
        self.precision = check_precision(precision)
        self.be = get_backend(self.backend, precision)
        self.act_dtype = storage_dtype(precision) or self.dtype   # activations and their grads

    def sync_lowp(self):
        """Refresh params_lp, the weights the forward and backward read, from the masters:
        after every optimizer step and load_params. For fp32 it is params itself."""
        self.params_lp = None               # the old copy goes first: one copy at the peak
        self.params_lp = working_copy(self.params, self.precision)

    # ----------------------------------------------------------------------------- helpers
    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    @classmethod
    def from_pretrained(cls, path, backend="numpy", dtype=None, precision="fp32"):
        """A GPT from a Hugging Face GPT-2 / GPT-1 folder (config.json + model.safetensors)."""
        from .hf import from_pretrained
        check_supported(backend, precision)
        model = from_pretrained(path, backend=backend, dtype=master_dtype(precision, dtype))
        if precision != "fp32":
            model._use_precision(precision)
            model.sync_lowp()
        return model

    @classmethod
    def load(cls, path, backend="numpy", dtype=None, precision=None):
        """A GPT from a checkpoint or run folder written by train (or by compress: quantised
        linears then run through quant_linear), or from a Hugging Face GPT-2 / GPT-1 folder."""
        from .checkpoint import load_model
        return load_model(path, backend=backend, dtype=dtype, precision=precision)[0]

    def save_pretrained(self, path):
        """Write a Hugging Face GPT-2 (pre-LN) or GPT-1 (post-LN) folder."""
        from .hf import save_pretrained
        save_pretrained(self, path)

    def load_params(self, params):
        """Replace the parameters (name -> array), checking names and shapes."""
        shapes = self.cfg.param_shapes()
        if set(params) != set(shapes):
            missing, extra = set(shapes) - set(params), set(params) - set(shapes)
            raise ValueError(f"params: names differ from the config (missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(extra)[:5]})")
        for k, v in params.items():
            if tuple(v.shape) != shapes[k]:
                raise ValueError(f"params[{k!r}]: expected shape {shapes[k]}, got {tuple(v.shape)}")
        self.params = {k: self.be.xp.asarray(np.asarray(v, dtype=self.dtype)
                                             if isinstance(v, np.ndarray) else v.astype(self.dtype))
                       for k, v in params.items()}
        self.sync_lowp()

    def _dropping(self):
        return self.training and self.cfg.dropout > 0.0

    def _dropout(self, x, site):
        """Dropout at one of the 2*n_layer+1 sites; the stream names (step, site)."""
        if not self._dropping():
            return x, (None, 1.0)
        return self.be.dropout.forward(x, self.cfg.dropout, self.dropout_seed,
                                       stream=(self.dropout_step << 16) | site)

    def _check_idx(self, idx, name="idx"):
        if not hasattr(idx, "dtype") or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"{name}: expected an integer array, got "
                            f"{getattr(idx, 'dtype', type(idx).__name__)}")
        if idx.ndim != 2:
            raise ValueError(f"{name}: expected shape [B, T], got {tuple(idx.shape)}")
        if idx.shape[1] > self.cfg.block_size:
            raise ValueError(f"{name}: T={idx.shape[1]} exceeds block_size={self.cfg.block_size}")
        return self._to_device(idx)

    def _to_device(self, a):
        """Host (NumPy) or device ids as a C-contiguous array of the backend's module: the one
        crossing from the caller's arrays to the kernels' (CuPy takes no NumPy array in its
        routines, so the copy to the device comes first)."""
        xp = self.be.xp
        return xp.ascontiguousarray(xp.asarray(a))

    # ----------------------------------------------------------------------------- forward
    def forward(self, idx, targets=None):
        """idx int [B, T] -> (logits [B, T, V], mean loss or None). Targets of -1 are ignored."""
        be, P, cfg = self.be, self.params_lp, self.cfg
        idx = self._check_idx(idx)
        if targets is not None:
            targets = self._to_device(targets)
        caches = {}
        x, caches["embedding"] = be.embedding.forward(idx, P["wte.weight"], P["wpe.weight"])
        x, caches["embedding.drop"] = self._dropout(x, site=0)
        for i in range(cfg.n_layer):
            x, caches[i] = self._block_forward(i, x)
        if cfg.ln_placement == "pre":
            x, caches["ln_f"] = be.layernorm.forward(x, P["ln_f.weight"], P["ln_f.bias"], cfg.ln_eps)
        self.hidden = x
        logits, caches["lm_head"] = be.linear.forward(x, P["wte.weight"])   # tied to wte
        loss = None
        if targets is not None:
            loss, caches["xent"] = be.softmax_xent.forward(logits, targets)
        if self._dropping():
            self.dropout_step += 1
        self._caches = caches
        return logits, loss

    def _block_forward(self, i, x):
        be, P, cfg, h = self.be, self.params_lp, self.cfg, f"h.{i}."
        c = {}

        def ln(name, v):
            out, c[name] = be.layernorm.forward(v, P[h + name + ".weight"], P[h + name + ".bias"],
                                                cfg.ln_eps)
            return out

        def lin(name, v):
            out, c[name] = be.linear.forward(v, P[h + name + ".weight"], P[h + name + ".bias"])
            return out

        def attn_branch(v):
            a, c["attn"] = be.attention.forward(lin("attn.c_attn", v), cfg.n_head, self.windows[i])
            a, c["attn.drop"] = self._dropout(lin("attn.c_proj", a), site=1 + 2 * i)
            return a

        def mlp_branch(v):
            g, c["gelu"] = be.gelu.forward(lin("mlp.c_fc", v), cfg.gelu)
            m, c["mlp.drop"] = self._dropout(lin("mlp.c_proj", g), site=2 + 2 * i)
            return m

        if cfg.ln_placement == "pre":
            x, _ = be.residual.forward(x, attn_branch(ln("ln_1", x)))
            x, _ = be.residual.forward(x, mlp_branch(ln("ln_2", x)))
        else:
            x = ln("ln_1", be.residual.forward(x, attn_branch(x))[0])
            x = ln("ln_2", be.residual.forward(x, mlp_branch(x))[0])
        return x, c

    # ---------------------------------------------------------------------------- backward
    def backward(self, loss_weight=1.0, dhidden=None):
        """Gradients of loss_weight * loss (+ <dhidden, hidden> when dhidden is given, for a
        head on the final hidden state) with respect to every parameter: a dict keyed as params,
        in the masters' dtype (fp32 under bf16 / fp16; the activation gradients between the ops
        are of the storage type). Consumes the caches of the last forward."""
        be, P, cfg = self.be, self.params, self.cfg
        caches = self._caches
        if caches is None:
            raise RuntimeError("backward: call forward first (each forward allows one backward)")
        if "xent" not in caches and dhidden is None:
            raise RuntimeError("backward: the last forward had no targets and no dhidden was given")
        self._caches = None
        grads = {}
        dx = None
        if "xent" in caches:
            dlogits = be.softmax_xent.backward(loss_weight, caches["xent"])
            dx, grads["wte.weight"], _ = be.linear.backward(dlogits, caches["lm_head"])
        if dhidden is not None:
            dhidden = be.xp.asarray(dhidden, dtype=self.act_dtype)
            dx = dhidden if dx is None else be.residual.forward(dx, dhidden)[0]
        if cfg.ln_placement == "pre":
            dx, grads["ln_f.weight"], grads["ln_f.bias"] = be.layernorm.backward(dx, caches["ln_f"])
        for i in reversed(range(cfg.n_layer)):
            dx = self._block_backward(i, dx, caches[i], grads)
        dx = be.dropout.backward(dx, caches["embedding.drop"])
        dwte, grads["wpe.weight"] = be.embedding.backward(dx, caches["embedding"])
        # tied embeddings: wte collects the output projection's gradient and the lookup's
        grads["wte.weight"] = (dwte if "wte.weight" not in grads
                               else be.residual.forward(grads["wte.weight"], dwte)[0])
        return {k: grads[k] for k in P}

    def _block_backward(self, i, dx, c, grads):
        be, h = self.be, f"h.{i}."

        def ln_back(name, d):
            d, grads[h + name + ".weight"], grads[h + name + ".bias"] = be.layernorm.backward(d, c[name])
            return d

        def lin_back(name, d):
            d, grads[h + name + ".weight"], grads[h + name + ".bias"] = be.linear.backward(d, c[name])
            return d

        def attn_branch_back(d):
            d = lin_back("attn.c_proj", be.dropout.backward(d, c["attn.drop"]))
            return lin_back("attn.c_attn", be.attention.backward(d, c["attn"]))

        def mlp_branch_back(d):
            d = lin_back("mlp.c_proj", be.dropout.backward(d, c["mlp.drop"]))
            return lin_back("mlp.c_fc", be.gelu.backward(d, c["gelu"]))

        if self.cfg.ln_placement == "pre":
            # x_out = x_mid + mlp(LN2(x_mid)): the residual passes dx on unchanged, plus the branch
            dx = be.residual.forward(dx, ln_back("ln_2", mlp_branch_back(dx)))[0]
            dx = be.residual.forward(dx, ln_back("ln_1", attn_branch_back(dx)))[0]
        else:
            # x_out = LN2(x_mid + mlp(x_mid)): through the norm first, then both residual paths
            d = ln_back("ln_2", dx)
            dx = be.residual.forward(d, mlp_branch_back(d))[0]
            d = ln_back("ln_1", dx)
            dx = be.residual.forward(d, attn_branch_back(d))[0]
        return dx

    # --------------------------------------------------------------------------- inference
    def _forward_cached(self, idx, kv, t0):
        """Forward of new tokens idx [B, Tn] at positions t0.. given the per-layer key/value
        caches kv (lists of [B, H, S, D] arrays, extended in place). Returns last logits [B, V]."""
        be, P, cfg, xp = self.be, self.params_lp, self.cfg, self.be.xp
        B, Tn = idx.shape
        H, D = cfg.n_head, cfg.head_dim
        pos_table = P["wpe.weight"][t0:t0 + Tn]
        x, _ = be.embedding.forward(idx, P["wte.weight"], pos_table)
        for i in range(cfg.n_layer):
            h = f"h.{i}."

            def ln(name, v):
                return be.layernorm.forward(v, P[h + name + ".weight"], P[h + name + ".bias"],
                                            cfg.ln_eps)[0]

            def lin(name, v):
                return be.linear.forward(v, P[h + name + ".weight"], P[h + name + ".bias"])[0]

            def attn_branch(v):
                qkv = lin("attn.c_attn", v).reshape(B, Tn, 3, H, D).transpose(2, 0, 3, 1, 4)
                kv[i][0] = qkv[1] if kv[i][0] is None else xp.concatenate([kv[i][0], qkv[1]], axis=2)
                kv[i][1] = qkv[2] if kv[i][1] is None else xp.concatenate([kv[i][1], qkv[2]], axis=2)
                a = be.attention.decode(xp.ascontiguousarray(qkv[0]), kv[i][0], kv[i][1], t0,
                                        self.windows[i])
                return lin("attn.c_proj", a)

            def mlp_branch(v):
                return lin("mlp.c_proj", be.gelu.forward(lin("mlp.c_fc", v), cfg.gelu)[0])

            add = lambda a, b: be.residual.forward(a, b)[0]   # noqa: E731 (rounds as training does)
            if cfg.ln_placement == "pre":
                x = add(x, attn_branch(ln("ln_1", x)))
                x = add(x, mlp_branch(ln("ln_2", x)))
            else:
                x = ln("ln_1", add(x, attn_branch(x)))
                x = ln("ln_2", add(x, mlp_branch(x)))
        if cfg.ln_placement == "pre":
            x = be.layernorm.forward(x, P["ln_f.weight"], P["ln_f.bias"], cfg.ln_eps)[0]
        return be.linear.forward(xp.ascontiguousarray(x[:, -1]), P["wte.weight"])[0]

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None,
                 use_cache=True):
        """Append max_new_tokens sampled tokens to idx [B, T] (NumPy ints); returns NumPy [B, T+n].

        temperature=0 is greedy. With use_cache, keys and values of past positions are kept so
        each new token costs one position's forward; once the context holds block_size tokens,
        positions shift each step and the window is recomputed (as without the cache).
        """
        idx = np.asarray(idx)
        if idx.ndim == 1:
            idx = idx[None]
        self._check_idx(idx[:, -self.cfg.block_size:])
        check_sampling(idx, temperature, top_k, top_p)
        Tmax = self.cfg.block_size
        if idx.shape[1] > Tmax:
            warnings.warn(f"prompt of {idx.shape[1]} tokens is longer than the context "
                          f"({Tmax}); keeping the last {Tmax}", stacklevel=2)
        rng = np.random.default_rng(seed)
        was_training, self.training = self.training, False
        try:
            out = idx
            kv, cached = None, 0            # cached = positions held in kv
            for _ in range(max_new_tokens):
                ctx = out[:, -Tmax:]
                if use_cache and out.shape[1] <= Tmax:
                    if kv is None:
                        kv = [[None, None] for _ in range(self.cfg.n_layer)]
                    new = self._to_device(ctx[:, cached:])
                    logits = self._forward_cached(new, kv, cached)
                    cached = ctx.shape[1]
                else:
                    logits = self.forward(ctx)[0][:, -1]
                    self._caches = None
                nxt = sample_next(self.be.asnumpy(logits).astype(np.float64), temperature,
                                  top_k, top_p, rng)
                out = np.concatenate([out, nxt[:, None]], axis=1)
            return out
        finally:
            self.training = was_training


def check_sampling(idx, temperature, top_k, top_p):
    """generate()'s arguments: a non-empty prompt [B, T] and the sampling knobs in range."""
    if idx.shape[1] == 0:
        raise ValueError("idx: the prompt must hold at least one token")
    if temperature < 0:
        raise ValueError(f"temperature: expected >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k: expected None or >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p: expected None or a value in (0, 1], got {top_p}")


def sample_next(logits, temperature, top_k, top_p, rng):
    """One token per row of logits [B, V] (float64). Inverse-CDF sampling with one uniform per row."""
    if temperature == 0:
        return logits.argmax(axis=-1)
    z = logits / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.sort(z, axis=-1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p >= top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        p = np.where(drop, 0.0, p)
        p /= p.sum(axis=-1, keepdims=True)
    u = rng.random(p.shape[0])[:, None]
    cdf = np.cumsum(p, axis=-1)
    return np.minimum((cdf < u * cdf[:, -1:]).sum(axis=-1), p.shape[-1] - 1)
