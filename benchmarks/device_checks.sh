#!/usr/bin/env bash
# The GPU-machine checks, as one script (run by the lead through the device tool; see BENCHMARKS.md):
#   1. the guidance latency benchmark and critic-training time on CPU pinned to 2 cores (a quiet machine, the same
#      arithmetic as the 2-core dev box), 2. the guidance latency benchmark on CUDA, 3. full-size SmolVLA latency on
#      CUDA (unguided vs guided, explicit loop vs hook mode).
# Missing Python packages travel as wheels in .whl/ (lerobot, transformers 5.5.4, ...); results go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PY:-python3}"
{ nproc; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; "$PY" -c "import torch; print(torch.__version__)"; } 2>&1 | tee "$OUT/machine.txt"
echo "== guidance latency, CPU, 2 cores"
taskset -c 0,1 "$PY" benchmarks/guidance_latency.py --threads 2 --reps 30 --json "$OUT/guidance_cpu2.json" 2>&1 | tee "$OUT/guidance_cpu2.txt"
echo "== critic training, CPU, 2 cores"
taskset -c 0,1 timeout 180 "$PY" benchmarks/critic_training.py --threads 2 --json "$OUT/critic_training_cpu2.json" 2>&1 | tail -12
echo "== guidance latency, CUDA"
"$PY" benchmarks/guidance_latency.py --device cuda --reps 50 --json "$OUT/guidance_cuda.json" 2>&1 | tee "$OUT/guidance_cuda.txt"
echo "== SmolVLA latency, CUDA (tiny smoke, then full size)"
"$PY" benchmarks/lerobot_latency.py --device cuda --size tiny --reps 3 --warmup 1 --json "$OUT/lerobot_cuda_tiny.json" 2>&1 | tail -15
timeout 240 "$PY" benchmarks/lerobot_latency.py --device cuda --size full --reps 10 --warmup 2 --json "$OUT/lerobot_cuda.json" 2>&1 | tail -25
