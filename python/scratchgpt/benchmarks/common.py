"""What every benchmark shares: medians, the time budget, random inputs, the run's identity
(commit, threads), and importing torch without requiring it."""
import ctypes
import os
import statistics
import subprocess
import time

import numpy as np


def median(values):
    return float(statistics.median(values))


class Budget:
    """A wall-clock allowance for a whole run: sections ask `left()` before starting and
    record a reason instead of running when it is spent (a GPU check has minutes, not hours)."""

    def __init__(self, seconds=None):
        self.seconds = seconds
        self.start = time.perf_counter()

    def left(self):
        if self.seconds is None:
            return float("inf")
        return self.seconds - (time.perf_counter() - self.start)

    def spent(self, need_s=0.0):
        return self.left() < need_s


def import_torch():
    """(torch, None) or (None, why not)."""
    try:
        import torch
    except Exception as e:           # absent, or a broken install: both mean "no comparison"
        return None, f"torch does not import: {e}"
    return torch, None


def randn(xp, shape, seed, dtype=np.float32, scale=1.0):
    """Standard-normal array of `dtype` made on the array module's device (never zeros)."""
    if xp is np:
        a = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    else:                                       # CuPy: draw on the device, no host round trip
        a = xp.random.RandomState(seed).standard_normal(shape, dtype=np.float32)
    a = a.astype(dtype, copy=False)
    if scale != 1.0:
        a *= scale
    return a


def randint(xp, low, high, shape, seed):
    if xp is np:
        return np.random.default_rng(seed).integers(low, high, size=shape, dtype=np.int64)
    return xp.random.RandomState(seed).randint(low, high, size=shape, dtype=np.int64)


def rel_err(ours, ref):
    """||ours - ref|| / ||ref|| in float64 (NaN fails: it propagates into the result)."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        raise ValueError(f"shape mismatch: {ours.shape} vs reference {ref.shape}")
    denom = np.linalg.norm(ref)
    diff = np.linalg.norm(ours - ref)
    return float(diff / denom) if denom > 0 else float(diff)


def _openblas(fn_name):
    """The loaded OpenBLAS's `fn_name` under any of its symbol spellings, or None."""
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
        for path in sorted(libs):
            lib = ctypes.CDLL(path)
            for sym in (f"openblas_{fn_name}", f"scipy_openblas_{fn_name}64_", f"openblas_{fn_name}64_"):
                fn = getattr(lib, sym, None)
                if fn is not None:
                    return fn
    except OSError:
        pass
    return None


def set_blas_threads(n):
    """Set NumPy's BLAS thread count (OpenBLAS); returns False when it cannot be set here."""
    fn = _openblas("set_num_threads")
    if fn is None:
        return False
    fn(int(n))
    return True


def blas_threads():
    """Threads NumPy's BLAS uses (OpenBLAS asked directly; else the usual environment
    variables; else the CPU count), and where the number came from."""
    fn = _openblas("get_num_threads")
    if fn is not None:
        return int(fn()), "openblas"
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]), var
    return os.cpu_count() or 1, "cpu_count"


def git_commit():
    """The checked-out commit (with '+dirty' when the tree has changes), or None outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("+dirty" if dirty else "")) if sha else None


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def load_average():
    """The 1-minute load average (other work on the machine skews CPU timings), or None."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
