#!/usr/bin/env bash
# Every GPU row of the README's Performance table in one call:
#   bash scripts/bench_gpu.sh [OUT.json]
# Needs the package's dependencies and the torch extra (torch, torchvision, timm, transformers).
# Rows are written to OUT.json as they finish; if the 8-minute limit stops the suite, the rows
# finished so far are still printed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench_gpu.json}
python -c "import jax; assert jax.default_backend() == 'gpu', 'no GPU: ' + jax.default_backend()" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 480 python -m megathread_jax.bench --suite gpu --json "$out"
status=$?
if [ "$status" -ne 0 ]; then
  echo "the suite stopped (exit $status); rows finished so far:"
  python -c "import json, sys; from megathread_jax import bench; print(bench.format_table(json.load(open(sys.argv[1]))))" "$out"
fi
exit "$status"
