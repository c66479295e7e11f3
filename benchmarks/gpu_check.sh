#!/usr/bin/env bash
# The prepared GPU check (issue 20) for a lent device machine: benchmarks/gpu_check.py over every group,
# about 8 minutes once the model file is there. Usage: benchmarks/gpu_check.sh MODEL.gguf [OUT_DIR]
# Carry the gguf wheel in .whl/ when the machine lacks the package (.library/device/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
timeout 560 python3 benchmarks/gpu_check.py "$1" "${2:-${OUT:-bench_out}/gpu_check}" --budget-s "${BUDGET_S:-420}"
