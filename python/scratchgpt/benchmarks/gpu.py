"""GPU benchmarks: CUDA-event timing with the L2 flushed between repeats, the ceilings
measured in the same run (device-to-device copy, cuBLAS SGEMM, cuBLAS bf16 GEMM), the
kernel table on the `cuda` backend against PyTorch, and one GPT-2 124M training step of our
model against the same model in PyTorch (eager and torch.compile'd).

fp32 means fp32 here: CuPy's TF32 switch is forced off before CuPy loads, and PyTorch's
TF32 flags are cleared, so every matmul (ours, cuBLAS's, PyTorch's) does full fp32 math.
"""
import os
import shutil
import subprocess
import time
import warnings

import numpy as np

from .common import median, randint

CUDA_R_32F, CUDA_R_16BF = 0, 14          # cudaDataType
CUBLAS_COMPUTE_32F = 68                  # cublasComputeType_t
CUBLAS_GEMM_DEFAULT = -1
CUBLAS_OP_N = 0


def import_cupy():
    """(cupy, None) when CuPy imports and sees a GPU, else (None, why not). Under
    SCRATCHGPT_EMULATE_CUDA=1 the emulated device's array module stands in for CuPy."""
    os.environ["CUPY_TF32"] = "0"        # read when CuPy loads: no TF32 in fp32 matmuls
    try:
        from ..kernels import device_array_module
        cupy = device_array_module()
    except Exception as e:
        return None, f"CuPy does not import: {e}"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:               # no driver, or no device: CuPy raises either way
        return None, f"no CUDA device: {e}"
    if n < 1:
        return None, "no CUDA device"
    return cupy, None


# Keeps the GPU busy for a fixed number of clock cycles while Python queues the timed call, so
# the events time the GPU's work and not the host's launch overhead (tens of microseconds,
# as long as a small kernel itself).
SPIN_KERNEL = r"""
extern "C" __global__ void spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


class EventTimer:
    """ms per call from CUDA events on the current stream (PyTorch's default stream is the same
    legacy stream), after warm-up. Before each repeat a buffer twice the L2's size is written,
    so no repeat reads its inputs from the previous repeat's cache; then a spin kernel holds the
    GPU for `spin_ms` while the call is queued behind it, so host overhead shorter than that is
    not counted (a call that synchronises with the host is timed whole, as it runs)."""

    def __init__(self, cp, warmup=3, repeats=20, spin_ms=1.0):
        self.cp, self.warmup, self.repeats = cp, warmup, repeats
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        self.l2_bytes = int(props.get("l2CacheSize", 0)) or 64 << 20
        self.flush = cp.empty(max(2 * self.l2_bytes, 64 << 20) // 4, dtype=cp.float32)
        self.start, self.end = cp.cuda.Event(), cp.cuda.Event()
        clock_khz = int(props.get("clockRate", 0)) or 2_000_000      # absent from CUDA 13's props
        self.spin_cycles = np.int64(clock_khz * spin_ms)
        try:
            self.spin = cp.RawKernel(SPIN_KERNEL, "spin")
            self.spin((1,), (1,), (self.spin_cycles,))
            cp.cuda.Device().synchronize()
        except Exception:           # no runtime compiler: time with the launch overhead
            self.spin = None

    def __call__(self, fn):
        cp = self.cp
        for _ in range(self.warmup):
            fn()
        cp.cuda.Device().synchronize()
        times = []
        for i in range(self.repeats):
            self.flush.fill(float(i))
            if self.spin is not None:
                self.spin((1,), (1,), (self.spin_cycles,))
            self.start.record()
            fn()
            self.end.record()
            self.end.synchronize()
            times.append(cp.cuda.get_elapsed_time(self.start, self.end))
        return times


def _bf16_bits(cp, a):
    """float32 CuPy array -> uint16 array holding bfloat16 bit patterns (truncated)."""
    return (a.view(cp.uint32) >> 16).astype(cp.uint16)


def _cublas():
    try:
        from cupy_backends.cuda.libs import cublas
    except ImportError:
        from cupy.cuda import cublas
    return cublas


def bf16_gemm(cp, a16, b16, c16, n):
    """C = A @ B in bfloat16 through cublasGemmEx (fp32 accumulation), all [n, n] row-major.
    Row-major C = A B is column-major C^T = B^T A^T: pass B first."""
    cublas = _cublas()
    alpha = np.ones(1, dtype=np.float32)
    beta = np.zeros(1, dtype=np.float32)
    handle = cp.cuda.device.get_cublas_handle()
    cublas.gemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, alpha.ctypes.data,
                  b16.data.ptr, CUDA_R_16BF, n, a16.data.ptr, CUDA_R_16BF, n, beta.ctypes.data,
                  c16.data.ptr, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)


def _bf16_to_f32(cp, c16):
    return (c16.astype(cp.uint32) << 16).view(cp.float32)


def gpu_ceilings(cp, timer, copy_bytes=2 << 30, gemm_n=8192, torch=None):
    """The measured ceilings: device-to-device copy (bytes read + written), cuBLAS SGEMM and
    cuBLAS bf16 GEMM (CuPy's cublasGemmEx; PyTorch's bf16 matmul if that path fails)."""
    src = cp.random.RandomState(0).standard_normal(copy_bytes // 4, dtype=cp.float32)
    dst = cp.empty_like(src)
    stream = cp.cuda.get_current_stream().ptr
    kernel_copy_ms = median(timer(lambda: cp.copyto(dst, src)))
    try:
        copy_ms = median(timer(lambda: cp.cuda.runtime.memcpyAsync(
            dst.data.ptr, src.data.ptr, src.nbytes, cp.cuda.runtime.memcpyDeviceToDevice, stream)))
    except Exception:                   # the copy kernel alone still gives the ceiling
        copy_ms = float("inf")
    out = {"copy_gbps": 2 * src.nbytes / (min(copy_ms, kernel_copy_ms) * 1e-3) / 1e9,
           "copy_source": "cudaMemcpy D2D" if copy_ms <= kernel_copy_ms else "CuPy copy kernel",
           "copy_bytes": int(src.nbytes)}
    del src, dst

    rs = cp.random.RandomState(1)
    a = rs.standard_normal((gemm_n, gemm_n), dtype=cp.float32)
    b = rs.standard_normal((gemm_n, gemm_n), dtype=cp.float32)
    c = cp.empty_like(a)
    sgemm_ms = median(timer(lambda: cp.matmul(a, b, out=c)))
    out.update(sgemm_tflops=2 * gemm_n ** 3 / (sgemm_ms * 1e-3) / 1e12, gemm_n=gemm_n,
               cupy_tf32=os.environ.get("CUPY_TF32"))

    # bf16: check the call on a small product first (a wrong type code would still "run")
    try:
        n = 256
        x = rs.standard_normal((n, n), dtype=cp.float32)
        y = rs.standard_normal((n, n), dtype=cp.float32)
        x16, y16, z16 = _bf16_bits(cp, x), _bf16_bits(cp, y), cp.empty((n, n), dtype=cp.uint16)
        bf16_gemm(cp, x16, y16, z16, n)
        want = _bf16_to_f32(cp, x16) @ _bf16_to_f32(cp, y16)
        err = float(cp.linalg.norm(_bf16_to_f32(cp, z16) - want) / cp.linalg.norm(want))
        if not err < 1e-2:
            raise RuntimeError(f"bf16 GEMM check failed: relative error {err:.2e}")
        a16, b16, c16 = _bf16_bits(cp, a), _bf16_bits(cp, b), cp.empty((gemm_n, gemm_n), cp.uint16)
        bf16_ms = median(timer(lambda: bf16_gemm(cp, a16, b16, c16, gemm_n)))
        out["bf16_source"] = "cublasGemmEx via CuPy"
    except Exception as e:
        if torch is None:
            out.update(bf16_gemm_tflops=None, bf16_gemm_reason=f"{type(e).__name__}: {e}")
            return out
        ta = torch.randn(gemm_n, gemm_n, device="cuda", dtype=torch.bfloat16)
        tb = torch.randn(gemm_n, gemm_n, device="cuda", dtype=torch.bfloat16)
        bf16_ms = median(timer(lambda: ta @ tb))
        out["bf16_source"] = f"torch.matmul (CuPy path failed: {type(e).__name__}: {e})"
    out["bf16_gemm_tflops"] = 2 * gemm_n ** 3 / (bf16_ms * 1e-3) / 1e12
    return out


def device_info(cp):
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    driver = None
    if shutil.which("nvidia-smi"):
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30).stdout.split("\n")[0].strip()
        except (OSError, subprocess.SubprocessError):
            driver = None
    if not driver:
        v = cp.cuda.runtime.driverGetVersion()
        driver = f"CUDA driver API {v // 1000}.{v % 1000 // 10}"
    rt = cp.cuda.runtime.runtimeGetVersion()
    return {"device": name, "driver": driver, "cuda_runtime": f"{rt // 1000}.{rt % 1000 // 10}",
            "cupy_version": cp.__version__, "l2_bytes": props.get("l2CacheSize"),
            "sm_count": props.get("multiProcessorCount"),
            "memory_gib": round(int(props.get("totalGlobalMem", 0)) / 2 ** 30, 1)}


def torch_for_gpu():
    """(torch, None) when torch imports with CUDA, else (None, why not); TF32 off."""
    from .common import import_torch
    torch, reason = import_torch()
    if torch is None:
        return None, reason
    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} has no CUDA device"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    return torch, None


# --------------------------------------------------------------------------- end to end
def _timed_steps(step, data, warmup, sync):
    times = []
    for i, (x, y) in enumerate(data):
        sync()
        t0 = time.perf_counter()
        step(x, y)
        sync()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return median(times)


def gpu_end_to_end(cp, cfg, batch, seq, ceilings, torch=None, steps=5, warmup=2, compile=True,
                   budget=None, seed=0, precisions=("fp32", "bf16")):
    """One training step (forward + backward + clipped AdamW) of our model on `cuda`, the
    PyTorch model eager (fused AdamW) and torch.compile'd: ms/step, tokens/s and the model
    FLOPs utilisation, in fp32 (against the measured SGEMM rate) and in bf16 (ours: bf16
    storage on the tensor-core kernels, fp32 masters; PyTorch: bf16 autocast, fp32 weights;
    against the measured bf16 GEMM rate). bf16 keys end in `_bf16`."""
    from ..model import GPT, init_params
    from ..optim import AdamW
    from .cpu import ADAMW, numpy_step, torch_step

    tokens = batch * seq
    flops_per_token = cfg.flops_per_token()
    out = {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "vocab_size": cfg.vocab_size, "batch": batch, "seq": seq,
           "dtype": "float32", "flops_per_token": flops_per_token, "precisions": list(precisions)}
    peak = {"fp32": ceilings.get("sgemm_tflops"), "bf16": ceilings.get("bf16_gemm_tflops")}

    def rates(prefix, precision, ms):
        out[f"{prefix}_ms_per_step"] = ms
        out[f"{prefix}_tokens_per_s"] = tokens / (ms * 1e-3)
        if peak[precision]:
            out[f"{prefix}_mfu"] = flops_per_token * tokens / (ms * 1e-3) / (peak[precision] * 1e12)

    data = [(randint(cp, 0, cfg.vocab_size, (batch, seq), seed + 2 * i),
             randint(cp, 0, cfg.vocab_size, (batch, seq), seed + 2 * i + 1)) for i in range(warmup + steps)]
    sync = cp.cuda.Device().synchronize
    for precision in precisions:
        suffix = "" if precision == "fp32" else f"_{precision}"
        try:
            from ..ops import get_backend
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                backend = get_backend("cuda", precision)
            if backend.fallbacks:    # those ops would run on the host reference: not a GPU number
                raise RuntimeError(f"no cuda kernel yet for {', '.join(backend.fallbacks)} (they "
                                   "would run on the host reference)")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = GPT(cfg, backend="cuda", dtype="float32", seed=seed, precision=precision)
            opt = AdamW(model.params, model.be, **ADAMW)
            out[f"cuda{suffix}_widened"] = list(model.be.widened)
            rates(f"cuda{suffix}", precision, _timed_steps(numpy_step(model, opt), data, warmup, sync))
            del model, opt
        except Exception as e:          # no cuda backend yet, or a kernel failed: say which
            out[f"cuda{suffix}_reason"] = f"{type(e).__name__}: {e}"
        cp.get_default_memory_pool().free_all_blocks()
    if torch is None:
        for precision in precisions:
            suffix = "" if precision == "fp32" else f"_{precision}"
            out[f"torch_cuda{suffix}_reason"] = out[f"torch_compile{suffix}_reason"] = \
                "torch with CUDA is not available"
        return out
    # the PyTorch model starts from the same weights as ours
    params = {k: v.astype(np.float32) for k, v in init_params(cfg, seed).items()}

    from .torch_gpt import TorchGPT, make_adamw
    tdata = [(torch.from_dlpack(x), torch.from_dlpack(y)) for x, y in data]
    tsync = torch.cuda.synchronize
    for precision in precisions:
        suffix = "" if precision == "fp32" else f"_{precision}"
        for name, compiled in ((f"torch_cuda{suffix}", False), (f"torch_compile{suffix}", True)):
            if compiled and not compile:
                out[f"{name}_reason"] = "skipped (--no-compile)"
                continue
            if compiled and budget is not None and budget.spent(150.0):
                out[f"{name}_reason"] = "skipped: too little of the time budget left to compile"
                continue
            try:
                tmodel = TorchGPT(cfg).cuda().load_numpy(params)
                topt = make_adamw(tmodel, fused=True, **ADAMW)
                fwd = torch.compile(tmodel) if compiled else tmodel
                t0 = time.perf_counter()
                step = torch_step(torch, fwd, topt)
                if precision == "bf16":     # autocast: bf16 matmuls and attention, fp32 weights
                    plain = step

                    def step(x, y, plain=plain):
                        with torch.autocast("cuda", dtype=torch.bfloat16):
                            return plain(x, y)
                if compiled:    # the first calls compile: keep that out of the timing, report it
                    for x, y in tdata[:warmup]:
                        step(x, y)
                    tsync()
                    out[f"{name}_s"] = time.perf_counter() - t0
                rates(name, precision, _timed_steps(step, tdata, warmup, tsync))
                del tmodel, topt, fwd
            except Exception as e:
                out[f"{name}_reason"] = f"{type(e).__name__}: {e}"
            torch.cuda.empty_cache()
        ours = out.get(f"cuda{suffix}_ms_per_step")
        for other in ("torch", "torch_compile"):
            theirs = out.get(f"{'torch_cuda' if other == 'torch' else other}{suffix}_ms_per_step")
            if ours and theirs:
                out[f"cuda_vs_{other}{suffix}"] = theirs / ours
    return out
