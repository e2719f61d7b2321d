#!/bin/bash
# One GPU session's checks (one H100, < 8 min): everything into one folder, see benchmarks/gpu_check.py.
#   bash benchmarks/gpu_check.sh [results/gpu_check/NAME] [more gpu_check.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/gpu_check/$(date +%Y%m%d-%H%M%S)}
shift || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > /dev/null 2>&1 || echo "no nvidia-smi: running on CPU"
mkdir -p "$OUT"
timeout 470 python benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
