"""The emulated device: a CuPy-shaped array module over host memory, for SCRATCHGPT_EMULATE_CUDA=1.

With it the `cuda` backend runs on a machine without a GPU: the model, the kernel wrappers and
the bindings take exactly the path they take on a GPU (device arrays in, `__cuda_array_interface__`
to the `_emulated` module, whose launchers check every pointer against this device's allocations
and run the kernels on the host executor). What makes the emulation worth running is that it
refuses what CuPy refuses, so a NumPy array that leaks into device code fails here as on a GPU:

    - `ndarray` is a type of its own (not a numpy.ndarray subclass) exposing
      `__cuda_array_interface__` (version 3), and no `__array_interface__` or buffer protocol;
    - `ndarray.__array__` raises TypeError, as `cupy.ndarray.__array__` does, so np.asarray(d),
      np.array(d) and float(...) of a multi-element array fail; `asnumpy` / `ndarray.get()` go to
      the host and `asarray` / `array` come back: the only ways across;
    - arithmetic and ufuncs take device arrays and scalars (Python or NumPy scalars); a
      numpy.ndarray operand raises TypeError("Unsupported type <class 'numpy.ndarray'>"), as
      CuPy's `_preprocess_arg` -> `CScalar` does;
    - `ascontiguousarray` (a Cython `_ndarray_base` argument in CuPy) raises TypeError for
      anything but a device array; `concatenate` / `stack` raise "Only cupy arrays can be
      concatenated"; `zeros_like` / `empty_like` read only shape and dtype (as CuPy's do);
    - NumPy functions called on device arrays dispatch here through `__array_function__` /
      `__array_ufunc__` (np.exp(d) is a device array), and fail where this module has no
      equivalent, as CuPy returns NotImplemented;
    - indices may be device arrays, NumPy arrays or lists (CuPy copies them to the device).

Each rule was checked against CuPy v14.0.0's source (cupy/_core/core.pyx: __array__,
__array_ufunc__, __array_function__; cupy/_core/_kernel.pyx: _preprocess_arg;
cupy/_core/_routines_manipulation.pyx: concatenate_method; cupy/_creation/from_data.py and
basic.py: ascontiguousarray, zeros_like; cupy/_core/_routines_indexing.pyx: _prepare_slice_list).

Memory: every device array's data lies in an allocation registered with `_emulated` (a NumPy
buffer owned here); the bindings refuse any other pointer, as cudaPointerGetAttributes refuses
host memory on a GPU. `get_default_memory_pool()` counts the bytes in use (used_bytes,
total_bytes, as CuPy's pool) and their peak (`peak_bytes`, an addition of ours, for memory
estimates); allocations beyond the device's size (SCRATCHGPT_EMULATED_MEMORY_GB, default 16)
raise OutOfMemoryError. Streams and events exist so that the cuda code paths run; the host
executor runs every launch to completion, so they order nothing and time wall-clock.
"""
import builtins
import os
import threading
import time
import weakref

import numpy as np

__version__ = "14.0.0 (emulated on the host executor)"

_lib = None


def _library():
    global _lib
    if _lib is None:
        from . import load
        _lib = load("cuda")
    return _lib


# ------------------------------------------------------------------------------------ memory
class OutOfMemoryError(MemoryError):
    """As cupy.cuda.memory.OutOfMemoryError (a MemoryError)."""

    def __init__(self, size, total):
        super().__init__(f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes).")


class MemoryPool:
    """Bytes held by live device arrays. used_bytes/total_bytes/free_all_blocks as CuPy's
    MemoryPool (nothing is cached here, so used == total); peak_bytes/reset_peak are ours."""

    def __init__(self):
        # reentrant: a garbage collection inside _take may run an array's finalizer, which
        # gives its bytes back (_give) on the same thread
        self._lock = threading.RLock()
        self._used = 0
        self._peak = 0

    def used_bytes(self):
        return self._used

    def total_bytes(self):
        return self._used

    def free_bytes(self):
        return 0

    def free_all_blocks(self):
        pass

    def peak_bytes(self):
        return self._peak

    def reset_peak(self):
        with self._lock:
            self._peak = self._used

    def _take(self, n):
        limit = device_memory_bytes()
        with self._lock:
            if self._used + n > limit:
                raise OutOfMemoryError(n, self._used)
            self._used += n
            self._peak = builtins.max(self._peak, self._used)

    def _give(self, n):
        with self._lock:
            self._used -= n


_pool = MemoryPool()


def get_default_memory_pool():
    return _pool


def device_memory_bytes():
    return int(float(os.environ.get("SCRATCHGPT_EMULATED_MEMORY_GB", "16")) * 2**30)


# root buffer id -> a weak reference to it, for the allocations that are device memory
_device_buffers = {}


def _release(key, ptr, nbytes):
    _device_buffers.pop(key, None)
    _pool._give(nbytes)
    if _lib is not None:
        _lib.release_allocation(ptr)


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _adopt(buffer):
    """Make an owning, C-contiguous NumPy array device memory (no copy)."""
    nbytes = buffer.nbytes
    _pool._take(nbytes)
    ptr = buffer.__array_interface__["data"][0]
    _library().register_allocation(ptr, builtins.max(nbytes, 1))
    _device_buffers[id(buffer)] = weakref.ref(buffer)
    weakref.finalize(buffer, _release, id(buffer), ptr, nbytes)


def _on_device(a):
    """True when the NumPy array `a` views device memory."""
    r = _root(a)
    ref = _device_buffers.get(id(r))
    return ref is not None and ref() is r


def _device_copy(a, dtype=None):
    """A new device allocation holding a copy of the host array `a`."""
    a = np.asarray(a, dtype=dtype)
    out = np.empty(a.shape, a.dtype)
    _adopt(out)
    out[...] = a
    return out


def _wrap(result):
    """A NumPy result of a computation on device data, as a device array."""
    if isinstance(result, np.ndarray):
        if result.flags.owndata and result.flags.c_contiguous and result.base is None \
                and id(result) not in _device_buffers:
            _adopt(result)
            return ndarray._view(result)
        if _on_device(result):
            return ndarray._view(result)
        return ndarray._view(_device_copy(result))
    if isinstance(result, np.generic):         # reductions give 0-d device arrays, as CuPy's do
        return ndarray._view(_device_copy(result))
    if isinstance(result, tuple):
        return tuple(_wrap(r) for r in result)
    return result


# -------------------------------------------------------------------------- argument rules
def _unsupported(x):
    return TypeError(f"Unsupported type {type(x)}")


def _operand(x):
    """A ufunc operand as NumPy: device arrays and scalars pass, host arrays are refused."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (bool, int, float, complex, np.generic)):
        return x
    if hasattr(x, "__cuda_array_interface__"):
        raise TypeError(f"{type(x).__name__}: device arrays of another library are not memory of "
                        "the emulated device")
    raise _unsupported(x)


def _device_only(x, what):
    if not isinstance(x, ndarray):
        raise TypeError(f"Argument '{what}' has incorrect type (expected cupy._core.core._ndarray_base, "
                        f"got {type(x).__name__})")
    return x._a


def _index(key):
    """Indices: device arrays, NumPy arrays, lists, ints, slices (CuPy copies arrays over)."""
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    if isinstance(key, ndarray):
        return key._a
    return key


# ---------------------------------------------------------------------------------- ndarray
class _Flags:
    def __init__(self, a):
        self.c_contiguous = bool(a.flags.c_contiguous)
        self.f_contiguous = bool(a.flags.f_contiguous)
        self.owndata = bool(a.flags.owndata)

    def __getitem__(self, key):
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "OWNDATA": self.owndata}[key]


class _MemoryPointer:
    def __init__(self, ptr):
        self.ptr = ptr
        self.device_id = 0


class ndarray:
    """A device array: its data is memory of the emulated device."""

    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 100

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("ndarray(memptr=, strides=) is not emulated")
        self._a = _device_copy(np.empty(shape, dtype, order=order))

    @classmethod
    def _view(cls, a):
        obj = cls.__new__(cls)
        obj._a = a
        return obj

    # ----------------------------------------------------------------- description
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: _Flags(self._a))
    data = property(lambda self: _MemoryPointer(self._a.__array_interface__["data"][0]))
    device = property(lambda self: Device(0))

    @property
    def __cuda_array_interface__(self):
        a = self._a
        return {"shape": a.shape, "typestr": a.dtype.str, "descr": a.dtype.descr,
                "data": (a.__array_interface__["data"][0], not a.flags.writeable),
                "strides": None if a.flags.c_contiguous else a.strides,
                "version": 3, "stream": 1}

    # --------------------------------------------------------------- the borders
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def get(self, stream=None, order="C", out=None, blocking=True):
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError("Only numpy.ndarray can be obtained from cupy.ndarray")
            out[...] = self._a
            return out
        return np.array(self._a, order=order)

    def set(self, arr, stream=None):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr).__name__}")
        if arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError("Shape or dtype mismatch")
        self._a[...] = arr

    def item(self):
        return self._a.item()

    def tolist(self):
        return self._a.tolist()

    def __int__(self):
        return int(self.get())

    def __float__(self):
        return float(self.get())

    def __index__(self):
        return self._a.__index__()

    def __bool__(self):
        return bool(self.get())

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    def __repr__(self):
        return repr(self.get())

    def __str__(self):
        return str(self.get())

    def __format__(self, spec):
        return format(self.get(), spec)

    def __reduce__(self):
        raise TypeError("device arrays of the emulated device are not picklable; use .get()")

    # ------------------------------------------------------------------ views
    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        self._a[_index(key)] = _operand(value)

    def reshape(self, *shape, order="C"):
        return _wrap(self._a.reshape(*shape, order=order))

    def transpose(self, *axes):
        return _wrap(self._a.transpose(*axes))

    def swapaxes(self, a, b):
        return _wrap(self._a.swapaxes(a, b))

    def squeeze(self, axis=None):
        return _wrap(self._a.squeeze(axis))

    def ravel(self, order="C"):
        return _wrap(self._a.ravel(order))

    def view(self, dtype=None):
        return _wrap(self._a.view() if dtype is None else self._a.view(dtype))

    T = property(lambda self: _wrap(self._a.T))

    def flatten(self):
        return _wrap(self._a.flatten())

    def copy(self, order="C"):
        return _wrap(self._a.copy(order))

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        return _wrap(self._a.astype(dtype, order=order, copy=copy))

    def fill(self, value):
        self._a.fill(_operand(value))

    # -------------------------------------------------------------- reductions
    def _reduce(name):
        def method(self, *args, **kwargs):
            if "out" in kwargs:
                kwargs["out"] = _device_only(kwargs["out"], "out")
            return _wrap(getattr(self._a, name)(*args, **kwargs))
        method.__name__ = name
        return method

    sum = _reduce("sum")
    mean = _reduce("mean")
    var = _reduce("var")
    std = _reduce("std")
    max = _reduce("max")
    min = _reduce("min")
    argmax = _reduce("argmax")
    argmin = _reduce("argmin")
    any = _reduce("any")
    all = _reduce("all")
    prod = _reduce("prod")
    cumsum = _reduce("cumsum")
    clip = _reduce("clip")
    nonzero = _reduce("nonzero")
    del _reduce

    def dot(self, b, out=None):
        return matmul(self, b, out=out)

    # ------------------------------------------------------------- operators
    def _binary(ufunc, reflected=False):
        def method(self, other):
            if isinstance(other, np.ndarray):
                raise _unsupported(other)
            if not isinstance(other, (ndarray, bool, int, float, complex, np.generic)):
                return NotImplemented
            a, b = self._a, _operand(other)
            return _wrap(ufunc(b, a) if reflected else ufunc(a, b))
        return method

    def _inplace(ufunc):
        def method(self, other):
            ufunc(self._a, _operand(other), out=self._a)
            return self
        return method

    for _name, _uf in (("add", np.add), ("sub", np.subtract), ("mul", np.multiply),
                       ("truediv", np.true_divide), ("floordiv", np.floor_divide),
                       ("mod", np.remainder), ("pow", np.power), ("matmul", np.matmul),
                       ("and", np.bitwise_and), ("or", np.bitwise_or), ("xor", np.bitwise_xor),
                       ("lshift", np.left_shift), ("rshift", np.right_shift)):
        locals()[f"__{_name}__"] = _binary(_uf)
        locals()[f"__r{_name}__"] = _binary(_uf, reflected=True)
        locals()[f"__i{_name}__"] = _inplace(_uf)
    for _name, _uf in (("lt", np.less), ("le", np.less_equal), ("gt", np.greater),
                       ("ge", np.greater_equal), ("eq", np.equal), ("ne", np.not_equal)):
        locals()[f"__{_name}__"] = _binary(_uf)
    del _name, _uf, _binary, _inplace
    __hash__ = None

    def __neg__(self):
        return _wrap(-self._a)

    def __pos__(self):
        return self.copy()

    def __abs__(self):
        return _wrap(np.abs(self._a))

    def __invert__(self):
        return _wrap(~self._a)

    # ------------------------------------------------------ NumPy's protocols
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__":
            return NotImplemented
        args = [_operand(x) for x in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(_device_only(o, "out") for o in kwargs["out"])
        return _wrap(ufunc(*args, **kwargs))

    def __array_function__(self, func, types, args, kwargs):
        # as CuPy: the function of the same name in the matching submodule of ours, when the
        # arguments' types are device or NumPy arrays; NotImplemented (NumPy's TypeError) else
        import sys
        target = sys.modules[__name__]
        try:
            for part in func.__module__.split(".")[1:]:
                target = getattr(target, part)
            ours = getattr(target, func.__name__)
        except AttributeError:
            return NotImplemented
        if not builtins.all(issubclass(t, (ndarray, np.ndarray)) for t in types):
            return NotImplemented
        return ours(*args, **kwargs)


# ----------------------------------------------------------------------- module functions
def asarray(a, dtype=None, order=None, blocking=False):
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    if hasattr(a, "__cuda_array_interface__"):
        raise TypeError(f"{type(a).__name__}: device arrays of another library are not memory of "
                        "the emulated device")
    return ndarray._view(_device_copy(np.asarray(a, dtype=dtype, order=order)))


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, blocking=False):
    if isinstance(obj, ndarray):
        a = np.array(obj._a, dtype=dtype, copy=True, order=order, ndmin=ndmin)
        return _wrap(a)
    return asarray(np.array(obj, dtype=dtype, order=order, ndmin=ndmin))


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return np.asarray(a, order=order)   # CuPy's asnumpy passes host data through


def ascontiguousarray(a, dtype=None):
    x = _device_only(a, "a")
    return _wrap(np.ascontiguousarray(x, dtype=dtype))


def get_array_module(*args):
    import sys
    return sys.modules[__name__] if builtins.any(isinstance(a, ndarray) for a in args) else np


def _creator(fn):
    def create(*args, **kwargs):
        return ndarray._view(_device_copy(fn(*args, **kwargs)))
    create.__name__ = fn.__name__
    return create


empty = _creator(np.empty)
zeros = _creator(np.zeros)
ones = _creator(np.ones)
full = _creator(np.full)
arange = _creator(np.arange)
linspace = _creator(np.linspace)
eye = _creator(np.eye)


def _like(fn):
    def create(a, dtype=None, *args, **kwargs):
        # CuPy reads only shape and dtype of the prototype (cupy/_creation/basic.py)
        proto = np.empty(a.shape, a.dtype if dtype is None else dtype)
        return ndarray._view(_device_copy(fn(proto, *args, **kwargs)))
    create.__name__ = fn.__name__
    return create


empty_like = _like(np.empty_like)
zeros_like = _like(np.zeros_like)
ones_like = _like(np.ones_like)


def full_like(a, fill_value, dtype=None):
    return full(a.shape, fill_value, a.dtype if dtype is None else dtype)


def _joiner(fn):
    def join(tup, axis=0, out=None, dtype=None):
        if not tup:
            raise ValueError("Cannot concatenate from empty tuple")
        for o in tup:
            if not isinstance(o, ndarray):
                raise TypeError("Only cupy arrays can be concatenated")
        kwargs = {} if dtype is None else {"dtype": dtype}
        if out is not None:
            fn([o._a for o in tup], axis=axis, out=_device_only(out, "out"), **kwargs)
            return out
        return _wrap(fn([o._a for o in tup], axis=axis, **kwargs))
    join.__name__ = fn.__name__
    return join


concatenate = _joiner(np.concatenate)
stack = _joiner(np.stack)


def copyto(dst, src, casting="same_kind"):
    np.copyto(_device_only(dst, "dst"), _operand(src), casting=casting)


def _argument(x):
    """A routine's argument: device arrays pass as their data, host arrays are refused, and the
    rest (shapes, axes, scalars) passes through."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        raise _unsupported(x)
    if hasattr(x, "__cuda_array_interface__"):
        return _operand(x)
    return x


def _elementwise(fn):
    def apply(*args, out=None, **kwargs):
        kwargs = {k: _argument(v) for k, v in kwargs.items()}
        if out is not None:
            fn(*[_argument(a) for a in args], out=_device_only(out, "out"), **kwargs)
            return out
        return _wrap(fn(*[_argument(a) for a in args], **kwargs))
    apply.__name__ = fn.__name__
    return apply


for _name in ("add", "subtract", "multiply", "divide", "true_divide", "power", "negative",
              "exp", "log", "log1p", "expm1", "sqrt", "tanh", "sin", "cos", "abs", "absolute",
              "maximum", "minimum", "fmax", "fmin", "isfinite", "isnan", "isinf", "sign", "square",
              "greater", "less", "equal", "not_equal", "greater_equal", "less_equal", "where",
              "logical_and", "logical_or", "logical_not", "clip", "floor", "ceil", "rint",
              "matmul", "dot", "outer", "einsum", "sum", "mean", "max", "min", "amax", "amin",
              "argmax", "argmin", "any", "all", "prod", "cumsum", "var", "std", "transpose",
              "reshape", "ravel", "squeeze", "expand_dims", "broadcast_to", "take_along_axis",
              "sort", "argsort", "nonzero", "count_nonzero", "allclose", "array_equal",
              "isclose", "tril", "triu", "bitwise_and", "right_shift",
              "left_shift", "bitwise_or"):
    if hasattr(np, _name):
        globals()[_name] = _elementwise(getattr(np, _name))
del _name

float16, float32, float64 = np.float16, np.float32, np.float64
int8, int16, int32, int64 = np.int8, np.int16, np.int32, np.int64
uint8, uint16, uint32, uint64 = np.uint8, np.uint16, np.uint32, np.uint64
bool_ = np.bool_
dtype = np.dtype
newaxis = None
inf, nan, pi = np.inf, np.nan, np.pi


class linalg:
    norm = staticmethod(_elementwise(np.linalg.norm))


class random:
    """cupy.random's RandomState, drawing on the host (the streams differ from CuPy's)."""

    class RandomState:
        def __init__(self, seed=None):
            self._rng = np.random.RandomState(seed)

        def _draw(name):
            def draw(self, *args, dtype=None, **kwargs):
                out = getattr(self._rng, name)(*args, **kwargs)
                return asarray(out if dtype is None else np.asarray(out, dtype))
            draw.__name__ = name
            return draw

        standard_normal = _draw("standard_normal")
        normal = _draw("normal")
        uniform = _draw("uniform")
        randint = _draw("randint")
        random_sample = _draw("random_sample")
        rand = _draw("rand")
        randn = _draw("randn")
        del _draw


# ------------------------------------------------------------------------------------ cuda
class _Current:
    """`with x:` / `x.use()` / `x.synchronize()`, as CuPy's streams and devices have: the host
    executor runs every launch to completion, so there is nothing to switch or wait for."""

    def synchronize(self):
        pass

    def use(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Stream(_Current):
    """A stream of the emulated device: launches run to completion, so it orders nothing."""

    def __init__(self, null=False, non_blocking=False, ptr=0):
        self.ptr = ptr

    @property
    def done(self):          # cupy.cuda.Stream.done: every launch has already completed
        return True


class Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self._t = None

    def record(self, stream=None):
        self._t = time.perf_counter()

    def synchronize(self):
        pass


def get_elapsed_time(start, end):
    return (end._t - start._t) * 1e3


class Device(_Current):
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        if self.id != 0:
            raise ValueError(f"device {self.id}: the emulated machine has one device (0)")

    @property
    def mem_info(self):
        """(free, total) bytes, as cupy.cuda.Device().mem_info."""
        total = device_memory_bytes()
        return total - _pool.used_bytes(), total

    @property
    def compute_capability(self):
        return "90"


class _Runtime:
    memcpyDeviceToDevice = 3

    @staticmethod
    def getDeviceCount():
        return 1

    @staticmethod
    def getDevice():
        return 0

    @staticmethod
    def getDeviceProperties(device):
        lib = _library()
        return {"name": b"scratchgpt emulated device (host executor)",
                "totalGlobalMem": device_memory_bytes(), "l2CacheSize": 4 << 20,
                "multiProcessorCount": lib.info()["threads"], "major": 9, "minor": 0,
                "clockRate": 0, "memoryClockRate": 0, "memoryBusWidth": 0}

    @staticmethod
    def runtimeGetVersion():
        return 13000

    @staticmethod
    def driverGetVersion():
        return 13000

    @staticmethod
    def deviceSynchronize():
        pass


class cuda:
    runtime = _Runtime
    Stream = Stream
    Event = Event
    Device = Device
    get_elapsed_time = staticmethod(get_elapsed_time)
    OutOfMemoryError = OutOfMemoryError
    _current = Stream()

    @staticmethod
    def get_current_stream():
        return cuda._current

    @staticmethod
    def is_available():
        return True


class cuda_memory:
    OutOfMemoryError = OutOfMemoryError


cuda.memory = cuda_memory
