"""Pruning masks (1 keep, 0 pruned) and the masked fine-tuning that recovers from them.

    magnitude   the fraction S of smallest |w| of each layer (or, --global, of all pruned layers
                at one threshold, so wide layers and sensitive ones share the budget)
    2:4         in every run of four consecutive input weights of a row, the two largest |w|
                stay: the pattern sparse tensor cores (sm_80+) multiply at twice the rate

Ties break by position (a stable sort), so a mask is a function of the weights alone.
"""
import numpy as np

from ..errors import UsageError


def parse_prune(text):
    """--prune: a fraction in [0, 1) or "2:4" -> ("magnitude", S) | ("2:4", 0.5); UsageError else."""
    if text is None:
        return None
    if text.strip() == "2:4":
        return ("2:4", 0.5)
    try:
        s = float(text)
    except ValueError:
        raise UsageError(f"invalid value {text!r}", "--prune",
                         "a fraction of weights to remove in [0, 1), or 2:4") from None
    if not 0.0 <= s < 1.0:
        raise UsageError(f"{text} would remove {'every' if s >= 1 else 'a negative share of the'} "
                         "weight", "--prune", "a fraction in [0, 1) (1.0 leaves no model), or 2:4")
    return ("magnitude", s)


def magnitude_mask(w, sparsity):
    """Keep all but the round(sparsity * size) smallest |w| of w."""
    a = np.abs(np.asarray(w, np.float64)).ravel()
    drop = int(round(sparsity * a.size))
    mask = np.ones(a.size, np.uint8)
    mask[np.argsort(a, kind="stable")[:drop]] = 0
    return mask.reshape(np.shape(w))


def global_magnitude_masks(weights, sparsity):
    """One threshold over all the layers: {name: mask}, the global fraction `sparsity`."""
    names = list(weights)
    flat = np.concatenate([np.abs(np.asarray(weights[k], np.float64)).ravel() for k in names])
    masks = magnitude_mask(flat, sparsity)
    out, at = {}, 0
    for k in names:
        n = np.size(weights[k])
        out[k] = masks[at:at + n].reshape(np.shape(weights[k]))
        at += n
    return out


def two_four_mask(w):
    """2 of every 4 consecutive weights along each row (the input axis) kept: the larger |w|."""
    w = np.asarray(w, np.float64)
    N, K = w.shape
    if K % 4:
        raise UsageError(f"a layer of input width {K} is not a whole number of runs of 4",
                         "--prune 2:4", "input widths divisible by 4")
    runs = np.abs(w).reshape(N, K // 4, 4)
    order = np.argsort(runs, axis=2, kind="stable")        # ascending: the first two go
    mask = np.ones_like(runs, np.uint8)
    np.put_along_axis(mask, order[:, :, :2], 0, axis=2)
    return mask.reshape(N, K)


def make_masks(weights, kind, sparsity, global_=False):
    """{name: uint8 mask} for the layers in `weights` ({name: [N, K] array})."""
    if kind == "2:4":
        return {k: two_four_mask(w) for k, w in weights.items()}
    if global_:
        return global_magnitude_masks(weights, sparsity)
    return {k: magnitude_mask(w, sparsity) for k, w in weights.items()}


def recover(model, masks, train_tokens, steps, lr, batch_size, seed=0, progress=True):
    """Masked AdamW: `steps` steps of next-token training on train_tokens with the pruned
    weights held at zero (their gradients are zeroed before each step, so AdamW's moments stay
    zero there and the decoupled weight decay of a zero is zero; the mask is applied again after
    the step as a guard). Returns the training losses."""
    from tqdm import tqdm

    from ..data import BatchSampler
    from ..optim import AdamW

    xp = model.be.xp
    dev_masks = {k: xp.asarray(m.astype(model.dtype)) for k, m in masks.items()}
    for k, m in dev_masks.items():
        model.params[k] *= m
    model.sync_lowp()
    opt = AdamW(model.params, model.be, lr=lr, weight_decay=0.0)
    sampler = BatchSampler(train_tokens, batch_size, model.cfg.block_size, seed=seed)
    model.train()
    losses = []
    tokens = batch_size * model.cfg.block_size
    with tqdm(total=steps, desc="recover", unit="step", disable=not progress) as bar:
        for _ in range(steps):
            x, y = sampler.next_batch()
            _, loss = model.forward(x, y)
            grads = model.backward()
            for k, m in dev_masks.items():
                grads[k] *= m
            opt.step(grads, max_grad_norm=1.0)
            for k, m in dev_masks.items():
                model.params[k] *= m
            model.sync_lowp()
            losses.append(float(loss))
            bar.set_postfix(loss=f"{losses[-1]:.3f}",
                            tok_s=f"{tokens * bar.n / max(bar.format_dict['elapsed'], 1e-9):.0f}")
            bar.update()
    model.eval()
    return losses
