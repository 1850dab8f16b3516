#!/usr/bin/env bash
# GPU checks in one go (under five minutes on an H100/H200-class GPU):
# the CUDA tests, then the paper's 2D MNIST experiment in float32 and float64.
# Usage: bash bench/gpu.sh [OUT_DIR]     (results: OUT_DIR/gpu.json, default bench/results)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -m pytest -q -m cuda tests/
PYTHONUNBUFFERED=1 python3 bench/gpu.py --device cuda --out "$out"
