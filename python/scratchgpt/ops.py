"""Backends: which implementation of each op the model calls, and on which arrays.

    backend   arrays          ops
    numpy     NumPy           reference/ (float64 or float32)
    host      NumPy           compiled kernels run by the host executor (float32)
    cuda      CuPy            the same compiled kernels on the GPU (float32)

`get_backend(name)` returns a Backend whose attributes are op modules with the reference's
interface: `forward(...) -> (out, cache)`, `backward(dout, cache)`. The model is written once
against this interface.
"""
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from . import reference

BACKENDS = ("numpy", "host", "cuda")


@dataclass
class Backend:
    name: str
    xp: ModuleType                      # array module: numpy or cupy
    ops: dict                           # op name -> module with forward/backward
    fallbacks: list = field(default_factory=list)   # ops running on the reference here

    def __getattr__(self, op):
        try:
            return self.__dict__["ops"][op]
        except KeyError:
            raise AttributeError(op) from None

    def asnumpy(self, a):
        return a if self.xp is np else self.xp.asnumpy(a)


def reference_backend():
    return Backend("numpy", np, {op: getattr(reference, op) for op in reference.OPS})


def get_backend(name):
    if name == "numpy":
        return reference_backend()
    if name in ("host", "cuda"):
        raise NotImplementedError(
            f"backend {name!r}: the compiled kernels are not built in this version; "
            "use backend='numpy'")
    raise ValueError(f"backend: expected one of {BACKENDS}, got {name!r}")
