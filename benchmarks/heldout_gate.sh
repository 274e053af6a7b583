#!/usr/bin/env bash
# Issue #19, held-out tasks: does the trust gate keep a critic from harming tasks it never saw, and what does it
# cost in lift? MetaWorld leave-two-out over the six study tasks (design: benchmarks/heldout_gate.md, committed
# before any validation or test episode of this experiment ran). Every step resumes if re-run; each test episode
# is read once (the test ledger refuses a second read).
#
#   bash benchmarks/heldout_gate.sh            # RUN=runs/heldout TRUST=<trust_scale> WORKERS=2 to override
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/heldout}
WORKERS=${WORKERS:-2}
TRUST=${TRUST:-0.5}     # trust_scale of the gate (trust_min 0): fixed in benchmarks/heldout_gate.md
RHO=0.4                 # §10's strength, locked on validation seeds of the six tasks
POLICY=compact:builtin
TASKS=push,pick-place,push-wall,hand-insert,disassemble,shelf-place
TEST_SEEDS=30200-30279  # 80 per task, after every test seed read with this policy (§10: 30000–30099, §12: push-wall 30100–30179)
GF="uv run gaflow"
[ -n "${GAFLOW_PYTHON:-}" ] && GF="$GAFLOW_PYTHON -m gaflow.cli"

# 1. rollouts of the frozen base policy on the critic seeds (the study's 80 per task)
$GF collect --policy $POLICY --tasks $TASKS --seeds critic:80 --workers "$WORKERS" --no-dataset --out "$RUN/rollouts"

# 2. one critic per fold, trained without the fold's two tasks (the study's critic recipe)
declare -A HELD=([A]=push-wall,shelf-place [B]=push,hand-insert [C]=pick-place,disassemble)
for F in A B C; do
    [ -f "$RUN/critic_$F/critic.json" ] || $GF train-critic --data "$RUN/rollouts" --held-out-tasks "${HELD[$F]}" \
        --out "$RUN/critic_$F"
done
${GAFLOW_PYTHON:-uv run python} benchmarks/heldout_diagnostics.py --rollouts "$RUN/rollouts" \
    --critics "$RUN/critic_A,$RUN/critic_B,$RUN/critic_C" --out "$RUN/diagnostics.json"

# 3. per fold: lock ρ with the gate on the held-out tasks' validation seeds (one config, nothing chosen there),
#    then one test read with three arms on the same episodes: unguided, gated (the lock), ungated (the lock's config
#    with the gate off — §10's held-out protocol)
for F in A B C; do
    $GF sweep --policy $POLICY --critic "$RUN/critic_$F" --tasks "${HELD[$F]}" --seeds validation:30 --rule fixed \
        --grid relative=$RHO --grid trust_scale="$TRUST" --workers "$WORKERS" --out "$RUN/sweep_$F"
    $GF eval --policy $POLICY --critic "$RUN/critic_$F" --tasks "${HELD[$F]}" --seeds $TEST_SEEDS \
        --locked "$RUN/sweep_$F/locked.json" --arms unguided,guided,ungated --workers "$WORKERS" --out "$RUN/test_$F"
done
${GAFLOW_PYTHON:-uv run python} benchmarks/heldout_table.py "$RUN"
