"""Backends: which implementation of each op the model calls, and on which arrays.

    backend   arrays          ops
    numpy     NumPy           reference/ (float64 or float32)
    host      NumPy           compiled kernels run by the host executor (float32)
    cuda      CuPy            the same compiled kernels on the GPU (float32)

`get_backend(name)` returns a Backend whose attributes are op modules with the reference's
interface: `forward(...) -> (out, cache)`, `backward(dout, cache)`. The model is written once
against this interface. `get_backend(name, precision="bf16" | "fp16")` returns the same ops
storing activations in bfloat16 / float16 (precision.storage_backend: the one place that
wraps them, and that refuses the backends whose kernels are fp32 only).
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
    widened: list = field(default_factory=list)     # bf16/fp16: ops run in fp32 on widened inputs

    def __getattr__(self, op):
        try:
            return self.__dict__["ops"][op]
        except KeyError:
            raise AttributeError(op) from None

    def asnumpy(self, a):
        return a if self.xp is np else self.xp.asnumpy(a)


def reference_backend():
    return Backend("numpy", np, {op: getattr(reference, op) for op in reference.OPS})


def get_backend(name, precision="fp32"):
    from .precision import check_supported, storage_backend
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {name!r}")
    check_supported(name, precision)
    backend = reference_backend() if name == "numpy" else kernel_backend(name)
    return storage_backend(backend, precision)


def kernel_backend(name):
    """The compiled kernels for `name` ("host" or "cuda"); every op without a kernel yet runs on
    the reference (on the cuda backend through a host round trip) and is listed, once, in a
    KernelFallbackWarning and in Backend.fallbacks. RuntimeError when the backend is unavailable
    here, saying why (what `scratchgpt info` reports)."""
    import warnings

    from .kernels import REGISTRY, KernelFallbackWarning, Runtime
    from .kernels.fallback import HostFallback

    runtime = Runtime(name)
    ops, fallbacks = {}, []
    for op in reference.OPS:
        if op in REGISTRY:
            ops[op] = REGISTRY[op](runtime)
        else:
            module = getattr(reference, op)
            ops[op] = module if runtime.xp is np else HostFallback(module, runtime.xp)
            fallbacks.append(op)
    if fallbacks:
        warnings.warn(f"backend {name!r}: no kernel yet for {', '.join(fallbacks)}; "
                      "these ops run on the NumPy reference", KernelFallbackWarning, stacklevel=3)
    return Backend(name, runtime.xp, ops, fallbacks)
