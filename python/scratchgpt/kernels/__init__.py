"""The compiled kernels' Python face: load `_host` / `_cuda`, describe them, dispatch ops.

    _host   every csrc/*.cu compiled by the C++ compiler and run by the host executor (NumPy arrays)
    _cuda   the same sources compiled by nvcc, run on the GPU (CuPy arrays; PyTorch CUDA tensors too)

REGISTRY maps an op name to its wrapper class (one module per op: kernels/layernorm.py, ...).
A wrapper has the reference op's interface (`forward(...) -> (out, cache)`, `backward(dout, cache)`),
allocates its outputs with the backend's array module and calls the bound launcher, which checks
dtype, shapes, contiguity and device and raises TypeError / ValueError naming the argument.
Adding an op: write kernels/OP.py with a class taking a Runtime, add one line to REGISTRY.

SCRATCHGPT_HOST_LIB=path/to/_host*.so loads another build of `_host` (CI: the ASan build);
SCRATCHGPT_EMULATED_LIB=path/to/_emulated*.so does the same for `_emulated`.

SCRATCHGPT_EMULATE_CUDA=1 makes the `cuda` backend available without a GPU: its arrays are the
emulated device's (kernels/emulated.py, as strict as CuPy's), its launchers are `_emulated`'s
(csrc/bindings.cpp's cuda path over the host executor's kernels). Everything above the bindings
runs as on a GPU, so CI runs the cuda backend's own code.
"""
import importlib
import importlib.util
import os

import numpy as np

from . import layernorm
from . import gelu, linear, residual
from . import attention
from . import adamw, dropout, embedding, softmax_xent
from . import gru

REGISTRY = {
    "layernorm": layernorm.LayerNorm,
    # linear.cu, gelu.cu, residual.cu
    "linear": linear.Linear,
    "gelu": gelu.Gelu,
    "residual": residual.Residual,
    # attention.cu
    "attention": attention.Attention,
    # embedding.cu, softmax_xent.cu, dropout.cu, adamw.cu
    "embedding": embedding.Embedding,
    "softmax_xent": softmax_xent.SoftmaxXent,
    "dropout": dropout.Dropout,
    "adamw": adamw.AdamW,
    # gru.cu (with linear.cu for the input projections)
    "gru": gru.GRU,
}

_MODULES = {}   # backend -> loaded module (or the RuntimeError saying why not)


class KernelFallbackWarning(UserWarning):
    """Some ops of a compiled backend have no kernel yet and run on the NumPy reference."""


def emulating_cuda():
    """True when SCRATCHGPT_EMULATE_CUDA=1: the cuda backend runs on the emulated device."""
    return os.environ.get("SCRATCHGPT_EMULATE_CUDA", "").strip() not in ("", "0")


def _module_name(backend):
    return "emulated" if backend == "cuda" and emulating_cuda() else backend


def load(backend):
    """The compiled module for `backend` ("host" or "cuda"); RuntimeError saying why not."""
    if backend not in ("host", "cuda"):
        raise ValueError(f"backend: expected 'host' or 'cuda', got {backend!r}")
    key = _module_name(backend)
    if key not in _MODULES:
        try:
            _MODULES[key] = _import(key)
        except ImportError as e:
            how = ("no CUDA compiler was found when the package was built, or SCRATCHGPT_NO_CUDA=1 was set"
                   if key == "cuda" else "rebuild with `pip install -e .`")
            _MODULES[key] = RuntimeError(f"the {key} kernel module is not built ({how}): {e}")
    module = _MODULES[key]
    if isinstance(module, Exception):
        raise module
    return module


def device_array_module():
    """The cuda backend's array module: CuPy, or the emulated device's under
    SCRATCHGPT_EMULATE_CUDA=1. ImportError when CuPy is missing."""
    if emulating_cuda():
        from . import emulated
        return emulated
    import cupy
    return cupy


def _import(backend):
    name = f"{__name__}._{backend}"
    variable = {"host": "SCRATCHGPT_HOST_LIB", "emulated": "SCRATCHGPT_EMULATED_LIB"}.get(backend)
    path = os.environ.get(variable) if variable else None
    if not path:
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise ImportError(f"{variable}={path} is not a loadable module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def backend_status(backend):
    """{"available": bool, "reason": str | None, ...}: what `scratchgpt info` reports."""
    try:
        lib = load(backend)
    except RuntimeError as e:
        status = {"available": False, "reason": str(e)}
        if backend == "cuda":
            status = {"built": False, **status, "device": None}
        return status
    status = dict(lib.info())
    if status.get("emulated"):
        from . import emulated
        status.update(built=True, device={
            "index": 0, "name": "emulated on the host executor", "count": 1,
            "memory_bytes": emulated.device_memory_bytes(), "compute_capability": "emulated",
            "multiprocessors": status["threads"]}, cupy=emulated.__version__)
        return status
    if backend == "cuda" and status["available"]:
        try:
            import cupy
            status["cupy"] = cupy.__version__
        except ImportError as e:
            status.update(available=False, reason=f"CuPy is not importable ({e}); install cupy-cuda13x")
    return status


def _storage_dtypes():
    """The float dtypes the kernels store: float32, and the 16-bit storage of mixed precision
    (ml_dtypes.bfloat16, numpy.float16). CuPy 14 holds ml_dtypes' bfloat16 too."""
    import ml_dtypes
    return (np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16))


class Runtime:
    """What an op wrapper needs from its backend: the bound launchers (`lib`), the array module
    (`xp`), the stream to launch on, and inputs as arrays of that module.

    Storage: float32, bfloat16 (ml_dtypes) or float16 arrays. The bindings see bfloat16 as
    uint16 bits (`bits`): its array-interface typestr '<V2' names no type, and a kernel
    templated on its storage type reads DType::U16 as __nv_bfloat16 (core/half.h)."""

    def __init__(self, backend):
        status = backend_status(backend)
        if not status["available"]:
            raise RuntimeError(f"backend {backend!r} is unavailable: {status['reason']}")
        self.backend = backend
        self.lib = load(backend)
        self.xp = device_array_module() if backend == "cuda" else np

    def stream(self):
        return self.xp.cuda.get_current_stream().ptr if self.backend == "cuda" else 0

    def empty(self, shape, dtype=np.float32):
        return self.xp.empty(shape, dtype=dtype)

    @staticmethod
    def bits(a):
        """`a` as the bindings take it: bfloat16 viewed as its uint16 bits, others unchanged."""
        return a.view(np.uint16) if a is not None and a.dtype.name == "bfloat16" else a

    def asarray(self, a):
        """A NumPy array (or anything array-like) as this backend's array (a copy to the GPU)."""
        return self.xp.asarray(a)

    def asnumpy(self, a):
        return a if isinstance(a, np.ndarray) else self.xp.asnumpy(a)

    def input(self, name, a):
        """`a` as an array of this backend's module, without a copy; floats must be float32."""
        device = hasattr(a, "__cuda_array_interface__")
        if self.backend == "cuda":
            if not device:
                raise TypeError(f"{name}: the cuda backend takes device arrays (CuPy, PyTorch CUDA), "
                                f"got {type(a).__name__}")
            a = self.xp.asarray(a)
        else:
            if device:
                raise TypeError(f"{name}: the host backend takes host arrays (NumPy), got a device "
                                f"array ({type(a).__name__})")
            if not (isinstance(a, np.ndarray) or hasattr(a, "__array_interface__") or hasattr(a, "__array__")):
                raise TypeError(f"{name}: expected an array, got {type(a).__name__}")
            a = np.asarray(a)
        if (a.dtype.kind == "f" or a.dtype.name == "bfloat16") and a.dtype not in _storage_dtypes():
            raise TypeError(f"{name}: the {self.backend} backend stores float32, bfloat16 or float16, "
                            f"got {a.dtype} (build the model with dtype='float32')")
        return a

    def inputs(self, **arrays):
        return [self.input(name, a) for name, a in arrays.items()]
