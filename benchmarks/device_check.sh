#!/usr/bin/env bash
# The one script for a lent GPU machine (no network; python3 with numpy, cupy, pybind11, cmake,
# ninja, pytest, hypothesis and torch already there). In order, stopping loudly at the first
# broken step:
#   1. the machine: nvidia-smi, compilers, Python packages
#   2. the build: both modules, ptxas register/spill report for every kernel
#   3. `scratchgpt info --json`: the cuda backend must see the GPU
#   4. pytest -m cuda: every kernel and executor test on the GPU (the slow ones too); then
#      compute-sanitizer memcheck and racecheck on a small model step, where the tool exists
#   5. the kernel benchmarks (benchmarks/gpu_bench.sh), in the time left
# Results in $OUT (at most 8 files): device_check.log, summary.json, info.json, ptxas.txt,
# bench/ (the benchmark's json, md, png and log). Under 8 minutes.
#
#   OUT=/some/dir benchmarks/device_check.sh       (default OUT: out/device_check)
#
# Without a GPU (a dry run) it builds, reports, collects the cuda tests and lets the benchmark
# say why it cannot run; the GPU steps are skipped, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out/device_check}"
mkdir -p "$OUT"
exec > >(tee "$OUT/device_check.log") 2>&1

LIMIT_S=470                 # the whole script, with a margin under 8 minutes
started=$SECONDS
step_name="start"
step() { step_name="$*"; echo; echo "=== [$((SECONDS - started))s] $*"; }
trap 'echo; echo "device_check: FAILED at step \"$step_name\" (line $LINENO) after $((SECONDS - started))s"' ERR

export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"   # works with or without pip
export HYPOTHESIS_PROFILE=ci PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

# ------------------------------------------------------------------------------------ 1. machine
step "machine"
date -u
echo "commit $commit"
if command -v nvidia-smi >/dev/null && nvidia-smi; then
    gpu=1
else
    gpu=0
    echo "no working nvidia-smi: dry run, the GPU steps are skipped"
fi
python3 --version
command -v nvcc >/dev/null && nvcc --version | tail -n 2 || echo "no nvcc on PATH"
python3 - <<'EOF'
import importlib
for name in ("numpy", "cupy", "torch", "pybind11", "pytest", "hypothesis", "setuptools"):
    try:
        print(f"{name:11s}", importlib.import_module(name).__version__)
    except Exception as e:  # report, the steps below decide what is fatal
        print(f"{name:11s} missing ({type(e).__name__}: {e})")
EOF

# -------------------------------------------------------------------------------------- 2. build
step "build"
build_started=$SECONDS
export SCRATCHGPT_BUILD_DIR="$PWD/build/device" SCRATCHGPT_CMAKE_ARGS="-DSCRATCHGPT_PTXAS_VERBOSE=ON"
export CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
rm -rf "$SCRATCHGPT_BUILD_DIR"     # a full build, so that ptxas reports every kernel
build_log="$(mktemp)"
if python3 -c "import setuptools, wheel" 2>/dev/null; then
    python3 -m pip install --no-build-isolation --no-deps -v -e . > "$build_log" 2>&1 \
        || { tail -n 60 "$build_log"; false; }
else   # no setuptools: CMake directly, modules written into the source tree
    cmake -S . -B "$SCRATCHGPT_BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release $SCRATCHGPT_CMAKE_ARGS \
        -DPython_EXECUTABLE="$(command -v python3)" -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" \
        > "$build_log" 2>&1 && cmake --build "$SCRATCHGPT_BUILD_DIR" >> "$build_log" 2>&1 \
        || { tail -n 60 "$build_log"; false; }
fi
build_s=$((SECONDS - build_started))
grep -E "scratchgpt:|warning" "$build_log" | grep -v "^ *$" | head -n 40 || true
# ptxas: one "Compiling entry function" line, then registers / spills, per kernel and arch
demangle() { if command -v c++filt >/dev/null; then c++filt; else cat; fi; }
grep -E "ptxas info|ptxas warning|bytes stack frame" "$build_log" | sed 's/^ *//' | demangle > "$OUT/ptxas.txt" || true
echo "built in ${build_s}s; ptxas report: $(grep -c 'Used' "$OUT/ptxas.txt" || true) kernel/arch entries"
grep -E "spill stores|Used" "$OUT/ptxas.txt" | paste - - | awk '{print}' | head -n 40 || true
rm -f "$build_log"

# ------------------------------------------------------------------------------------- 3. report
step "scratchgpt info"
python3 -m scratchgpt.cli info
python3 -m scratchgpt.cli info --json > "$OUT/info.json"
cuda_available="$(python3 -c "import json; print(int(json.load(open('$OUT/info.json'))['backends']['cuda']['available']))")"
if [ "$gpu" = 1 ] && [ "$cuda_available" != 1 ]; then
    echo "nvidia-smi sees a GPU but the cuda backend does not: see the reason above"
    false
fi

# ---------------------------------------------------------------------------------- 4. cuda tests
step "pytest -m cuda"
tests_started=$SECONDS
pytest_summary="not run (no GPU)"
if [ "$cuda_available" = 1 ]; then
    pytest_log="$(mktemp)"
    set +e
    python3 -m pytest -m cuda -q -rfEs -p no:cacheprovider tests 2>&1 | tee "$pytest_log"
    pytest_status=${PIPESTATUS[0]}
    set -e
    pytest_summary="$(tail -n 1 "$pytest_log")"
    rm -f "$pytest_log"
    [ "$pytest_status" = 0 ] || { echo "pytest -m cuda failed (exit $pytest_status)"; false; }
    case "$pytest_summary" in
        *skipped*) echo "WARNING: some cuda tests skipped on a GPU machine (reasons above)";;
    esac
else
    python3 -m pytest -m cuda -q --collect-only -p no:cacheprovider tests | tail -n 3
fi
tests_s=$((SECONDS - tests_started))

# --------------------------------------------------------------------------- 4b. compute-sanitizer
step "compute-sanitizer"
sanitizer_summary="not run"
sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1 || true)"
if [ "$cuda_available" != 1 ]; then
    sanitizer_summary="not run (no GPU)"
elif [ -z "$sanitizer" ]; then
    sanitizer_summary="not run (no compute-sanitizer on this machine)"
    echo "$sanitizer_summary"
else
    # a small model step (benchmarks/sanitizer_step.py); errors are reported, not fatal, so the
    # benchmarks still run; the summary says what each tool found
    sanitizer_summary=""
    for tool in memcheck racecheck; do
        set +e
        timeout 100 "$sanitizer" --tool "$tool" --error-exitcode 3 python3 benchmarks/sanitizer_step.py 2>&1 | tail -n 25
        status=${PIPESTATUS[0]}
        set -e
        case "$status" in
            0) result="clean";; 3) result="ERRORS (see the log)";; 124) result="timed out after 100 s";;
            *) result="failed (exit $status)";;
        esac
        echo "compute-sanitizer $tool: $result"
        sanitizer_summary="${sanitizer_summary}${sanitizer_summary:+; }$tool: $result"
    done
fi

# --------------------------------------------------------------------------------- 5. benchmarks
step "kernel benchmarks"
bench_status="not run"
if [ -x benchmarks/gpu_bench.sh ]; then
    budget=$((LIMIT_S - (SECONDS - started) - 100))    # gpu_bench.sh may overrun its budget by 90 s
    if [ "$budget" -lt 30 ]; then
        echo "only $((LIMIT_S - (SECONDS - started)))s left: benchmarks skipped"
    else
        echo "benchmark budget ${budget}s"
        set +e
        benchmarks/gpu_bench.sh "$OUT" "$budget"
        bench_status=$?
        set -e
        [ "$bench_status" = 0 ] || { echo "benchmarks failed (exit $bench_status)"; false; }
    fi
else
    echo "no benchmarks/gpu_bench.sh: nothing to run"
fi

# ---------------------------------------------------------------------------------------- summary
step "summary"
export DC_COMMIT="$commit" DC_GPU="$gpu" DC_BUILD_S="$build_s" DC_TESTS_S="$tests_s" \
       DC_PYTEST="$pytest_summary" DC_SANITIZER="$sanitizer_summary" DC_BENCH="$bench_status" DC_TOTAL_S="$((SECONDS - started))"
python3 - "$OUT" <<'EOF'
import datetime, json, os, sys
out = sys.argv[1]
env = os.environ
summary = {"commit": env["DC_COMMIT"],
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "gpu": env["DC_GPU"] == "1",
           "cuda": json.load(open(os.path.join(out, "info.json")))["backends"]["cuda"],
           "build_s": int(env["DC_BUILD_S"]), "tests_s": int(env["DC_TESTS_S"]),
           "pytest_cuda": env["DC_PYTEST"], "compute_sanitizer": env["DC_SANITIZER"],
           "bench_status": env["DC_BENCH"],
           "total_s": int(env["DC_TOTAL_S"])}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps(summary, indent=2))
EOF
echo "device_check: OK in $((SECONDS - started))s; results in $OUT"
