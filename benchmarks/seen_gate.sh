#!/usr/bin/env bash
# Issue #19, seen tasks: the six-task critic with the trust gate on — does the pooled lift stay ≥ +15 points?
# Design: benchmarks/heldout_gate.md ("Seen tasks"). Reuses the rollouts of benchmarks/heldout_gate.sh (run it
# first, or at least its step 1). Resumable; one test read.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/heldout}
WORKERS=${WORKERS:-2}
POLICY=compact:builtin
TASKS=push,pick-place,push-wall,hand-insert,disassemble,shelf-place
GF="uv run gaflow"
[ -n "${GAFLOW_PYTHON:-}" ] && GF="$GAFLOW_PYTHON -m gaflow.cli"

[ -f "$RUN/critic_all/critic.json" ] || $GF train-critic --data "$RUN/rollouts" --out "$RUN/critic_all"
$GF sweep --policy $POLICY --critic "$RUN/critic_all" --tasks $TASKS --seeds validation:30 --rule fixed \
    --grid relative=0.4 --grid trust_scale=0.5 --workers "$WORKERS" --out "$RUN/sweep_all"
$GF eval --policy $POLICY --critic "$RUN/critic_all" --tasks $TASKS --seeds 30280-30359 \
    --locked "$RUN/sweep_all/locked.json" --arms unguided,guided,ungated --workers "$WORKERS" --out "$RUN/seen_test"
