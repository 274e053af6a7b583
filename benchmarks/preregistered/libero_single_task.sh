#!/usr/bin/env bash
# The pre-registered LIBERO design of benchmarks/preregistered/libero_single_task.md — every step resumes if re-run;
# each test episode is read once (the test ledger refuses a second read).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/prereg}
ENV=libero:libero_spatial
POLICY=compact:$RUNS/base/policy

# base policy over tasks 2, 3, 4, 7: the recipe of `gaflow demo --preset libero` (demos on critic inits only, expert
# noise seeds from 1000, state-based, 4000 steps), run step by step so no test episode is read here
[ -f "$RUNS/base/demos/meta/info.json" ] || uv run gaflow libero-demos --tasks 2,3,4,7 --episodes-per-task 50 \
    --noise 0.3 --noise-seed 1000 --out "$RUNS/base/demos"
[ -f "$RUNS/base/policy/model.safetensors" ] || uv run gaflow train-policy --dataset "$RUNS/base/demos" \
    --out "$RUNS/base/policy" --steps 4000 --batch-size 64 --lr 5e-4 --warmup-steps 400 --checkpoint-every 1000 \
    --resume --num-threads 1 --no-use-image --use-env-state --state-std-floor 0.01

for TASK in 2 3 4; do
    uv run gaflow demo --preset libero --tasks "$TASK" --heldout-tasks '' --policy "$POLICY" --critic-episodes 300 \
        --validation-episodes 30 --test-episodes 105 --grid 0.1,0.2,0.4 --out "$RUNS/task$TASK"
done

# held-out task 7: a critic over tasks 2 and 3's rollouts, tuned on task 7's validation inits, one test read
[ -f "$RUNS/heldout7/critic/critic.json" ] || uv run gaflow train-critic \
    --data "$RUNS/task2/collect,$RUNS/task3/collect" --out "$RUNS/heldout7/critic"
uv run gaflow sweep --policy "$POLICY" --env "$ENV" --tasks 7 --critic "$RUNS/heldout7/critic" --seeds validation:30 \
    --grid relative=0.1,0.2,0.4 --out "$RUNS/heldout7/sweep"
uv run gaflow eval --policy "$POLICY" --env "$ENV" --tasks 7 --seeds test:105 --critic "$RUNS/heldout7/critic" \
    --locked "$RUNS/heldout7/sweep/locked.json" --arms unguided,guided,zero,random --out "$RUNS/heldout7/test"

for m in task2/test task3/test task4/test heldout7/test; do
    echo "## $m"; uv run python benchmarks/study_table.py "$RUNS/$m/metrics.json"
done
