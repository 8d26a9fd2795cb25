#!/usr/bin/env bash
# The GPU part of the benchmarks, as benchmarks/device_check.sh runs it after the cuda tests:
# ceilings, the kernel table against PyTorch, and the GPT-2 124M training step, written to
# OUT_DIR/bench (<date>_<device>.json/.md/.png and bench.log). Without a GPU it says why and
# exits 0. Runs from a source tree too (PYTHONPATH), so a failed build still gets PyTorch's
# numbers and the ceilings.
#
#   benchmarks/gpu_bench.sh OUT_DIR [BUDGET_SECONDS]     (default 240)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: $0 OUT_DIR [BUDGET_SECONDS]}/bench"
budget="${2:-240}"
mkdir -p "$out"
# --budget-s stops starting new work; the hard limit leaves room for the last step to finish
PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" timeout --kill-after=10 "$((budget + 90))" \
    python3 -m scratchgpt.bench --gpu --json --no-progress --out "$out" --budget-s "$budget" \
    > "$out/bench.log" 2>&1
status=$?
grep -v '^{' "$out/bench.log" | tail -n 80     # the tables (the JSON line stays in the log)
echo "gpu_bench: exit $status, results in $out"
exit $status
