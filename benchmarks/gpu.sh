#!/usr/bin/env bash
# Every GPU row of the README's Performance table in one call:
#   bash benchmarks/gpu.sh [OUT.json [--only TEXT ...]]
# Needs the package's dependencies and the torch extra (torch, torchvision, timm, transformers).
# Rows are written to OUT.json as they finish. The suite gets BENCH_GPU_SECONDS (default 480) of
# wall time; if that stops it, the rows finished so far are still printed. The whole suite takes
# longer than that on one GPU (docs/performance.md): `--only` (repeatable) picks rows by label
# ('64px', '96px train step', 'gpt2', 'end to end'). PYTHON picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench_gpu.json}
python=${PYTHON:-python3}
"$python" -c "import jax; assert jax.default_backend() == 'gpu', 'no GPU: ' + jax.default_backend()" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
started=$SECONDS
timeout -k 20 "${BENCH_GPU_SECONDS:-480}" "$python" -m benchmarks.bench --suite gpu --json "$out" "${@:2}"
status=$?
echo "suite: $((SECONDS - started)) s, exit $status"
if { [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; } && [ -f "$out" ]; then
  echo "stopped at the time limit; rows finished:"
  "$python" -c "import json, sys; from benchmarks.table import format_table; print(format_table(json.load(open(sys.argv[1]))))" "$out"
fi
exit "$status"
