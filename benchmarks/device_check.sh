#!/usr/bin/env bash
# The one script for a lent GPU machine (no network; python3 with numpy, cupy, pybind11, cmake,
# ninja, pytest, hypothesis and torch normally there, but nothing is assumed). Each step runs
# under its own timeout; a step that fails or hangs is recorded and the next one still runs, and
# summary.json is written however the script ends (even when it is itself interrupted):
#   1. machine       nvidia-smi, compilers, Python packages                      (30 s)
#   2. build         _cuda only (no host modules here): pip, or CMake directly
#                    when pip refuses or lacks setuptools; ptxas registers/spills  (300 s)
#   3. info          `scratchgpt info --json`: the cuda backend must see the GPU  (60 s)
#   4. cuda tests    the kernel, executor and model test files, -m cuda,
#                    SCRATCH_SYNC_LAUNCH=1 so a fault names its kernel            (240 s)
#   4b. nccl         a 1-rank NCCL communicator runs the data-parallel gradient reduction
#                    and ZeRO-1's all-gather on a small model (distributed.py)   (90 s)
#   5. sanitizer     compute-sanitizer memcheck + racecheck on a small model step (100 s each)
#   5b. quant decode benchmarks/quant_decode.py: fp32 / int8 / int4 decode tokens/s (60 s)
#   6. benchmarks    benchmarks/gpu_bench.sh in the time left
# Results in $OUT: device_check.log, summary.json (each step's status, exit code and seconds),
# info.json, ptxas.txt, bench/. The whole script stays under LIMIT_S (default 540 s).
#
#   OUT=/some/dir benchmarks/device_check.sh       (default OUT: out/device_check)
#
# Dry run without a GPU: the GPU steps say why they do not run. DEVICE_CHECK_EMULATE=1 runs the
# test step on the emulated device instead (SCRATCHGPT_EMULATE_CUDA=1, host executor), which
# proves the step's plumbing here; the tests' numbers then mean nothing about a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out/device_check}"
mkdir -p "$OUT"
exec > >(tee "$OUT/device_check.log") 2>&1

LIMIT_S="${LIMIT_S:-540}"
started=$SECONDS
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"   # runs from the tree, with or without pip
export HYPOTHESIS_PROFILE=ci PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
export OUT
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

# nvcc where CUDA installs it, when it is not on PATH
if ! command -v nvcc >/dev/null; then
    for d in /usr/local/cuda/bin /usr/local/cuda-*/bin /opt/cuda/bin; do
        if [ -x "$d/nvcc" ]; then export PATH="$d:$PATH"; break; fi
    done
fi
command -v nvcc >/dev/null && export CUDACXX="$(command -v nvcc)"

# ------------------------------------------------------------------------ steps and their record
STEPS=()                     # "name|status|exit code|seconds" per step, for summary.json
record() { STEPS+=("$1|$2|$3|$4"); }
left() { echo $((LIMIT_S - (SECONDS - started))); }

# run_step NAME TIMEOUT FUNCTION: the function in a child bash under `timeout`, never fatal here
run_step() {
    local name="$1" limit="$2" fn="$3" t0=$SECONDS rc status
    if [ "$(left)" -lt 10 ]; then
        echo; echo "=== $name: skipped, $(left)s left of ${LIMIT_S}s"
        record "$name" "skipped: out of time" "" 0
        return 0
    fi
    [ "$limit" -gt "$(left)" ] && limit="$(left)"
    echo; echo "=== [$((SECONDS - started))s] $name (timeout ${limit}s)"
    timeout --kill-after=10 "$limit" bash -c "$fn"
    rc=$?
    case "$rc" in
        0) status="ok";;
        124|137) status="timed out after ${limit}s";;
        77) status="skipped: $(cat "$OUT/.skip_reason" 2>/dev/null)";;
        *) status="failed";;
    esac
    rm -f "$OUT/.skip_reason"
    echo "=== $name: $status (exit $rc, $((SECONDS - t0))s)"
    record "$name" "$status" "$rc" "$((SECONDS - t0))"
}
# a step that cannot run here says why and exits 77
skip() { echo "$*" > "$OUT/.skip_reason"; echo "skipped: $*"; exit 77; }
export -f skip

write_summary() {
    local IFS=$'\n'
    DC_STEPS="${STEPS[*]:-}" DC_COMMIT="$commit" DC_TOTAL_S="$((SECONDS - started))" \
    python3 - "$OUT" <<'EOF' || echo "device_check: could not write summary.json"
import datetime, json, os, sys
out = sys.argv[1]
steps = []
for line in filter(None, os.environ["DC_STEPS"].split("\n")):
    name, status, rc, secs = line.split("|")
    steps.append({"step": name, "status": status, "exit_code": int(rc) if rc else None,
                  "seconds": int(secs)})
extra = {}
for name in ("info.json", "pytest.json"):
    try:
        extra[name.split(".")[0]] = json.load(open(os.path.join(out, name)))
    except Exception as e:
        extra[name.split(".")[0]] = f"unavailable ({type(e).__name__})"
summary = {"commit": os.environ["DC_COMMIT"],
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "ok": bool(steps) and all(s["status"] == "ok" or s["status"].startswith("skipped")
                                     for s in steps),
           "steps": steps, "total_s": int(os.environ["DC_TOTAL_S"]),
           "cuda": extra["info"]["backends"]["cuda"] if isinstance(extra["info"], dict) else extra["info"],
           "pytest": extra["pytest"]}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps({k: summary[k] for k in ("commit", "ok", "steps", "total_s")}, indent=2))
EOF
    echo "device_check: done in $((SECONDS - started))s; results in $OUT"
}
trap write_summary EXIT
trap 'echo "device_check: interrupted"; exit 143' TERM INT

# ------------------------------------------------------------------------------------ 1. machine
machine() {
    date -u
    if command -v nvidia-smi >/dev/null && nvidia-smi; then touch "$OUT/.gpu"; else
        echo "no working nvidia-smi: a dry run"; fi
    python3 --version
    if command -v nvcc >/dev/null; then nvcc --version | tail -n 2; else echo "no nvcc (PATH, /usr/local/cuda*/bin)"; fi
    python3 - <<'EOF'
import importlib
for name in ("numpy", "cupy", "torch", "pybind11", "pytest", "hypothesis", "safetensors",
             "setuptools", "cmake", "ninja"):
    try:
        print(f"{name:11s}", getattr(importlib.import_module(name), "__version__", "present"))
    except Exception as e:  # report only: the steps decide what they need
        print(f"{name:11s} missing ({type(e).__name__}: {e})")
EOF
}

# -------------------------------------------------------------------------------------- 2. build
build() {
    command -v nvcc >/dev/null || skip "no CUDA compiler"
    local dir="$PWD/build/device" log="$OUT/build.log"
    rm -rf "$dir"      # a full build, so that ptxas reports every kernel
    export SCRATCHGPT_BUILD_DIR="$dir" SCRATCHGPT_BUILD_TARGETS=_cuda \
           SCRATCHGPT_CMAKE_ARGS="-DSCRATCHGPT_PTXAS_VERBOSE=ON" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
    if python3 -c "import setuptools, wheel, pybind11" 2>/dev/null \
            && python3 -m pip install --no-build-isolation --no-deps -v -e . > "$log" 2>&1; then
        echo "built with pip"
    else
        echo "pip did not build (refused, or no setuptools/wheel): CMake directly"
        tail -n 5 "$log" 2>/dev/null
        rm -rf "$dir"
        cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DSCRATCHGPT_PTXAS_VERBOSE=ON \
              $(command -v ninja >/dev/null && echo -G Ninja) \
              -DPython_EXECUTABLE="$(command -v python3)" \
              -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" > "$log" 2>&1 \
            && cmake --build "$dir" --parallel "$(nproc)" --target _cuda >> "$log" 2>&1 \
            || { tail -n 60 "$log"; return 1; }
    fi
    grep -E "scratchgpt:|warning" "$log" | head -n 40
    grep -E "ptxas info|ptxas warning|bytes stack frame" "$log" | sed 's/^ *//' \
        | { if command -v c++filt >/dev/null; then c++filt; else cat; fi; } > "$OUT/ptxas.txt"
    echo "ptxas report: $(grep -c 'Used' "$OUT/ptxas.txt") kernel/arch entries; spills:"
    grep -B1 "[1-9][0-9]* bytes spill" "$OUT/ptxas.txt" | head -n 20
    ls python/scratchgpt/kernels/_cuda*.so
}

# ------------------------------------------------------------------------------------- 3. report
report() {
    python3 -m scratchgpt.cli info || return 1
    python3 -m scratchgpt.cli info --json > "$OUT/info.json" || return 1
    if [ -e "$OUT/.gpu" ] && ! python3 -c "import json,sys; sys.exit(not json.load(open('$OUT/info.json'))['backends']['cuda']['available'])"; then
        echo "nvidia-smi sees a GPU but the cuda backend does not (reason above)"
        return 1
    fi
}

# ---------------------------------------------------------------------------------- 4. cuda tests
cuda_tests() {
    if [ ! -e "$OUT/.gpu" ]; then
        [ "${DEVICE_CHECK_EMULATE:-0}" = 1 ] || skip "no GPU (DEVICE_CHECK_EMULATE=1 runs them emulated)"
        export SCRATCHGPT_EMULATE_CUDA=1
        echo "no GPU: the cuda tests run on the emulated device"
    fi
    export SCRATCH_SYNC_LAUNCH=1
    # a test still running after half the step's time has every thread's stack dumped, so a hang
    # names its test before the step's timeout ends it
    local dump=$(( ${DC_TESTS_TIMEOUT:-240} / 2 ))
    # the files that hold cuda variants, named, so a missing optional package (hypothesis,
    # safetensors, torch) costs only the files that need it (importorskip), never the run
    python3 -m pytest -m cuda -q -rfEs -p no:cacheprovider --continue-on-collection-errors \
        -o faulthandler_timeout="$dump" \
        --junitxml="$OUT/pytest.xml" \
        tests/test_*_kernel.py tests/test_executor.py tests/test_mma.py tests/test_model_kernels.py
    local rc=$?
    python3 - "$OUT" <<'EOF'
import json, os, sys
import xml.etree.ElementTree as ET
out = sys.argv[1]
try:
    suite = ET.parse(os.path.join(out, "pytest.xml")).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["time_s"] = float(suite.get("time", 0))
except Exception as e:
    counts = {"error": f"no junit report ({type(e).__name__})"}
json.dump(counts, open(os.path.join(out, "pytest.json"), "w"))
print("pytest:", counts)
EOF
    return $rc
}

# ------------------------------------------------------------------------------------- 4b. nccl
nccl() {
    [ -e "$OUT/.gpu" ] || skip "no GPU (the emulated device has no NCCL: tests/test_distributed.py runs the path on a stand-in)"
    python3 -m scratchgpt.distributed nccl-check | tee "$OUT/nccl.json"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 2 ] && skip "NCCL is not installed (pip install nvidia-nccl-cu13)"
    return $rc
}

# --------------------------------------------------------------------------- 5. compute-sanitizer
sanitizer() {
    [ -e "$OUT/.gpu" ] || skip "no GPU"
    local tool_path rc bad=0
    tool_path="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)"
    [ -n "$tool_path" ] || skip "no compute-sanitizer on this machine"
    for tool in memcheck racecheck; do
        timeout 100 "$tool_path" --tool "$tool" --error-exitcode 3 python3 benchmarks/sanitizer_step.py 2>&1 | tail -n 25
        rc=${PIPESTATUS[0]}
        echo "compute-sanitizer $tool: exit $rc ($( [ "$rc" = 0 ] && echo clean || echo 'ERRORS or failure, see above'))"
        [ "$rc" = 0 ] || bad=1
    done
    return $bad
}

# ------------------------------------------------------------------------ 5b. quantised decode
# batch-1 decode tokens/s of a gpt2-sized model with fp32 / int8 / int4 weights, and one
# 4096 x 4096 layer's GEMV (csrc/quant_linear.cu) against the fp32 linear, in weight GB/s
quant_decode() {
    [ -e "$OUT/.gpu" ] || skip "no GPU"
    python3 benchmarks/quant_decode.py --backend cuda --preset gpt2 --tokens 32 --layer 4096 \
        --repeats 50 --json "$OUT/quant_decode.json"
}

# --------------------------------------------------------------------------------- 6. benchmarks
benchmarks() {
    [ -e "$OUT/.gpu" ] || skip "no GPU"
    local budget=$(( ${STEP_LIMIT:-200} - 100 ))    # gpu_bench.sh may overrun its budget by 90 s
    [ "$budget" -ge 30 ] || skip "too little time left"
    benchmarks/gpu_bench.sh "$OUT" "$budget"
}

export -f machine build report cuda_tests nccl sanitizer quant_decode benchmarks
rm -f "$OUT/.gpu" "$OUT/.skip_reason" "$OUT/pytest.json" "$OUT/info.json"
run_step machine 30 machine
run_step build 300 build
run_step info 60 report
run_step "cuda tests" "${DC_TESTS_TIMEOUT:-240}" cuda_tests
run_step nccl 90 nccl
run_step compute-sanitizer 220 sanitizer
run_step "quantised decode" 60 quant_decode
STEP_LIMIT="$(left)"; export STEP_LIMIT
run_step benchmarks "$STEP_LIMIT" benchmarks
for s in "${STEPS[@]}"; do
    case "$s" in *"|failed|"*|*"|timed out"*) exit 1;; esac
done
