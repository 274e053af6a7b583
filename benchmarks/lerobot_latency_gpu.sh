#!/usr/bin/env bash
# Per-chunk latency of full-size SmolVLA (random weights, built offline) on CUDA: unguided vs guided
# (clean_estimate, 3 × 0.65M-parameter critics) and explicit loop vs hook mode — benchmarks/lerobot_latency.py.
#
#   bash benchmarks/lerobot_latency_gpu.sh [REPS] [OUT_DIR]      # from the repository root, on a GPU machine
#
# Needs no network (HF_HUB_OFFLINE=1). ~2 GB of GPU memory; a few minutes including the one-off LeRobot import.
# Writes OUT_DIR/lerobot_latency_cuda.json (and a tiny-model smoke run first, so a broken setup fails fast).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS="${1:-20}"
OUT="${2:-${OUT:-benchmarks/results}}"
UV="${UV:-uv}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$UV" run python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
"$UV" run python benchmarks/lerobot_latency.py --device cuda --size tiny --reps 3 --warmup 1 \
    --json "$OUT/lerobot_latency_cuda_tiny.json"
"$UV" run python benchmarks/lerobot_latency.py --device cuda --size full --reps "$REPS" --warmup 3 \
    --json "$OUT/lerobot_latency_cuda.json"
echo "wrote $OUT/lerobot_latency_cuda.json"
