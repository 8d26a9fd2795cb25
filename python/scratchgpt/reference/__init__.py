"""The NumPy reference: forward and backward of every op, written by hand.

One module per op, each with `forward(...) -> (out, cache)` and `backward(dout, cache)`.
They are the ground truth every kernel is tested against (docs/gradients/ derives each).
"""
from . import adamw, attention, dropout, embedding, gelu, gru, layernorm, linear, residual, softmax_xent

OPS = ("embedding", "layernorm", "linear", "gelu", "attention", "softmax_xent", "dropout",
       "residual", "adamw")
# not a GPT op: the GRU language model's layer (gru_model.py takes it from here or from kernels)
MODEL_EXTRA_OPS = ("gru",)

__all__ = list(OPS + MODEL_EXTRA_OPS)
