#!/usr/bin/env bash
# The whole LIBERO study of BENCHMARKS.md §11 in one command (issue #6): about 5 hours on 2 CPU cores.
#
#   bash benchmarks/libero_study.sh            # RUNS=runs by default; every step resumes if re-run
#
# 1. `gaflow demo --preset libero`: scripted-expert demos → state-based compact policy over libero_spatial tasks
#    0, 1, 5 → 3-task critic → validation → locked test → critic without task 5, on task 5          (§11)
# 2. single task: the same frozen policy, a critic from 300 of task 0's rollouts, ρ grid 0.1/0.2/0.4 on 30
#    validation episodes, 105 locked test episodes                                                  (§11b)
# 3. held-out task: a critic over tasks 0 and 1 (300 + 200 rollouts), run at the strength step 2 locked, on
#    task 5's 105 test episodes, which it never saw                                                 (§11c)
# 4. single-task replicate on task 1, reusing step 3's task-1 rollouts                              (§11b)
# 5. the scripted expert without noise on all 500 libero_spatial episodes                          (§8)
#
# History, not a fresh result: these runs read libero_spatial tasks 0, 1, 5's test inits several times (BENCHMARKS
# §0). Since the test ledger (issue #13) a rerun refuses those second reads; a lock now binds its critic, so step 3
# binds step 2's strength to the held-out critic with `gaflow sweep --rule fixed` on task 5's validation inits.
# The clean re-run of this design is benchmarks/preregistered/libero_single_task.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
POLICY=compact:$RUNS/libero_study/policy
ENV=libero:libero_spatial

uv run gaflow demo --preset libero --out "$RUNS/libero_study"

uv run gaflow demo --preset libero --tasks 0 --policy "$POLICY" --critic-episodes 300 --validation-episodes 30 \
    --test-episodes 105 --grid 0.1,0.2,0.4 --out "$RUNS/libero_t0v2"

uv run gaflow collect --policy "$POLICY" --env "$ENV" --tasks 1 --seeds critic:200 --out "$RUNS/libero_t1/collect"
[ -f "$RUNS/libero_heldout2/critic/critic.json" ] || \
    uv run gaflow train-critic --data "$RUNS/libero_t0v2/collect,$RUNS/libero_t1/collect" \
        --out "$RUNS/libero_heldout2/critic"
RHO=$(uv run python -c "import json; print(json.load(open('$RUNS/libero_t0v2/sweep/locked.json'))['guidance']['relative'])")
uv run gaflow sweep --policy "$POLICY" --env "$ENV" --tasks 5 --critic "$RUNS/libero_heldout2/critic" \
    --seeds validation:30 --grid "relative=$RHO" --rule fixed --out "$RUNS/libero_heldout2/sweep"
uv run gaflow eval --policy "$POLICY" --env "$ENV" --tasks 5 --seeds test:105 --critic "$RUNS/libero_heldout2/critic" \
    --locked "$RUNS/libero_heldout2/sweep/locked.json" --arms unguided,guided --out "$RUNS/libero_heldout2/test"

uv run gaflow demo --preset libero --tasks 1 --policy "$POLICY" --critic-episodes 200 --validation-episodes 30 \
    --test-episodes 105 --grid 0.1,0.2,0.4 --out "$RUNS/libero_t1"

[ -f "$RUNS/libero_expert_spatial_final.json" ] || \
    uv run python benchmarks/libero_expert.py --suite libero_spatial --workers 2 \
        --out "$RUNS/libero_expert_spatial_final.json"

for m in libero_study/test libero_study/test_heldout libero_t0v2/test libero_t1/test libero_heldout2/test; do
    echo "## $m"; uv run python benchmarks/study_table.py "$RUNS/$m/metrics.json"
done
uv run python benchmarks/libero_guidance_direction.py --run "$RUNS/libero_t0v2" --rho 0.1,0.2,0.4
uv run python benchmarks/libero_failures.py --data "$RUNS/libero_t0v2/collect" --task 0
uv run python benchmarks/libero_failures.py --data "$RUNS/libero_study/collect" --task 5
