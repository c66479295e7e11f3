#!/usr/bin/env bash
# One prepared GPU check for a lent device machine (installs nothing remote; < 8 minutes).
# Carry the gguf wheel if the image lacks it (see .library/device/README.md); results go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import jax; print(jax.devices())"
timeout 450 python3 benchmarks/gpu_check.py
