"""Build script: the package is pure Python plus two compiled kernel modules, built by CMake.

    scratchgpt.kernels._host   every csrc/*.cu compiled by the C++ compiler, run by the host executor
    scratchgpt.kernels._emulated  the same kernels behind the cuda backend's bindings: the emulated
                               device of SCRATCHGPT_EMULATE_CUDA=1 (tests and CI without a GPU)
    scratchgpt.kernels._cuda   the same sources compiled by nvcc (only when a CUDA compiler is found)

Environment:
    SCRATCHGPT_NO_CUDA=1       skip the CUDA module even when nvcc is present
    SCRATCHGPT_ASAN=1          build _host with AddressSanitizer (CI)
    SCRATCHGPT_BUILD_DIR=path  CMake build directory (default: build/cmake), kept for incremental builds
    SCRATCHGPT_BUILD_TARGETS=_cuda   build only these CMake targets (space-separated; the GPU
                               check builds no host modules)
    SCRATCHGPT_CMAKE_ARGS=...  extra CMake arguments, e.g. "-DSCRATCHGPT_PTXAS_VERBOSE=ON" (registers,
                               spills) or "-DCMAKE_CUDA_ARCHITECTURES=90-real"
    CMAKE_BUILD_PARALLEL_LEVEL parallel compile jobs (default: the number of cores)
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "on", "true", "yes")


class CMakeBuild(build_ext):
    """One CMake configure + build produces every module (CMakeLists.txt decides which)."""

    def run(self):
        ext = self.extensions[0]
        editable = self.inplace or getattr(self, "editable_mode", False)
        out_dir = (ROOT / "python" / "scratchgpt" / "kernels" if editable
                   else Path(self.get_ext_fullpath(ext.name)).parent.resolve())
        build_dir = Path(os.environ.get("SCRATCHGPT_BUILD_DIR", ROOT / "build" / "cmake")).resolve()
        self._forget_stale_cache(build_dir)
        build_dir.mkdir(parents=True, exist_ok=True)

        import pybind11
        cmake = shutil.which("cmake") or "cmake"
        args = [
            cmake, "-S", str(ROOT), "-B", str(build_dir),
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DSCRATCHGPT_OUTPUT_DIR={out_dir}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DSCRATCHGPT_CUDA={'OFF' if _flag('SCRATCHGPT_NO_CUDA') else 'ON'}",
            f"-DSCRATCHGPT_ASAN={'ON' if _flag('SCRATCHGPT_ASAN') else 'OFF'}",
        ]
        args += shlex.split(os.environ.get("SCRATCHGPT_CMAKE_ARGS", ""))
        if shutil.which("ninja") and not (build_dir / "Makefile").exists():
            args += ["-G", "Ninja"]
        subprocess.run(args, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        targets = os.environ.get("SCRATCHGPT_BUILD_TARGETS", "").split()
        subprocess.run([cmake, "--build", str(build_dir), "--parallel", jobs,
                        *(["--target", *targets] if targets else [])], check=True)

    @staticmethod
    def _forget_stale_cache(build_dir):
        # An isolated pip build runs CMake from a temporary environment; a cache that names a
        # cmake which no longer exists cannot regenerate itself, so start that build afresh.
        cache = build_dir / "CMakeCache.txt"
        if cache.exists():
            m = re.search(r"^CMAKE_COMMAND:INTERNAL=(.*)$", cache.read_text(), re.M)
            if m and not Path(m.group(1)).exists():
                shutil.rmtree(build_dir)

    def get_outputs(self):
        return []


setup(
    ext_modules=[CMakeExtension("scratchgpt.kernels._host")],
    cmdclass={"build_ext": CMakeBuild},
)
