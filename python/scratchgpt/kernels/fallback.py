"""Run a reference op (NumPy) for the cuda backend: device arrays in, device arrays out.

The reference modules only take NumPy arrays; on the cuda backend an op without a kernel yet
goes through this adapter, which copies arguments to the host, calls the reference, and copies
array results back (and, for the ops that update their arguments in place, the arguments too).
Slow by design: it keeps the model runnable until the op has its kernel.
"""
import numpy as np

# functions that write into their array arguments (reference/adamw.py)
IN_PLACE = {("adamw", "update"), ("adamw", "clip_by_global_norm")}


class HostFallback:
    def __init__(self, module, xp):
        self._module = module
        self._op = module.__name__.rsplit(".", 1)[-1]
        self._xp = xp

    def __getattr__(self, attr):
        value = getattr(self._module, attr)
        if not callable(value) or isinstance(value, type):
            return value
        in_place = (self._op, attr) in IN_PLACE

        def call(*args, **kwargs):
            moved = []   # (device array, its host copy)
            host_args = [self._to_host(a, moved) for a in args]
            host_kwargs = {k: self._to_host(v, moved) for k, v in kwargs.items()}
            result = value(*host_args, **host_kwargs)
            if in_place:
                for device, host in moved:
                    device[...] = self._xp.asarray(host)
            return self._to_device(result)

        call.__name__ = attr
        return call

    def _to_host(self, a, moved):
        if isinstance(a, self._xp.ndarray):
            host = self._xp.asnumpy(a)
            moved.append((a, host))
            return host
        if isinstance(a, (list, tuple)):
            return type(a)(self._to_host(v, moved) for v in a)
        if isinstance(a, dict):
            return {k: self._to_host(v, moved) for k, v in a.items()}
        return a

    def _to_device(self, a):
        if isinstance(a, np.ndarray):
            return self._xp.asarray(a)
        if isinstance(a, (list, tuple)):
            return type(a)(self._to_device(v) for v in a)
        if isinstance(a, dict):
            return {k: self._to_device(v) for k, v in a.items()}
        return a
