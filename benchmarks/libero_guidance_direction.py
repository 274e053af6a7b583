"""Which way does guidance push a LIBERO pick-and-place policy once it carries the object? (BENCHMARKS.md §11)

The compact LIBERO policy's failures are mostly time-outs while it holds the object above its target (LIBERO's
`On` predicate fires on contact, so lowering the object is what finishes the task). This script takes the recorded
critic rollouts of a run, keeps the chunk starts where the manipulated object (the first object in the
environment-state layout) is lifted ≥ ``--lift`` metres above its initial height, re-samples the policy's chunk
there with the **same noise** unguided and guided at each ρ, and prints the mean executed action per dimension
(unnormalised: dx, dy, dz, rotations, gripper; LIBERO's gripper is −1 open / +1 closed).

    uv run python benchmarks/libero_guidance_direction.py --run runs/libero_t0v2 --rho 0.2,0.4,0.8

Only episodes the critic never fitted are used: its validation split (default), or with ``--episodes held_out``
the episodes of the tasks it was trained without (e.g. ``--critic runs/libero_study/critic_heldout``), or with
``--episodes all --task T`` every episode of task ``T`` for a critic trained on other rollouts. Prints a table;
nothing is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import typer


def main(run: Path = typer.Option(..., help="pipeline run folder (collect/, critic/, pipeline.json)"),
         rho: str = typer.Option("0.2,0.4,0.8", help="relative strengths to compare with unguided"),
         lift: float = typer.Option(0.04, help="object height above its start that counts as carried (m)"),
         max_rows: int = typer.Option(600, help="at most this many chunk starts (spread over episodes)"),
         critic_dir: Path = typer.Option(None, "--critic", help="critic folder (default: <run>/critic)"),
         episodes: str = typer.Option("validation", help="validation: the critic's held-out episodes of its own "
                                      "tasks | held_out: the episodes of tasks it was trained without | all: every "
                                      "episode of the run (for a critic trained on other data)"),
         task: str = typer.Option(None, help="only this task's episodes")) -> None:
    from gaflow.cli import comma_list
    from gaflow.critic.data import ChunkTable
    from gaflow.critic.train import load_critic, rows_of
    from gaflow.evaluation.critic_check import observations_at
    from gaflow.guidance import Guidance, GuidanceConfig
    from gaflow.observations import ENV_STATE_KEY, stack_observations
    from gaflow.policies.registry import load_policy
    from gaflow.sampler import sample_chunks

    torch.set_num_threads(1)
    if episodes not in ("validation", "held_out", "all"):
        raise typer.BadParameter(f"--episodes must be validation, held_out or all, got {episodes!r}")
    cfg = json.loads((run / "pipeline.json").read_text())
    policy = load_policy(cfg["policy"] or f"compact:{run / 'policy'}")
    critic_dir = critic_dir or run / "critic"
    critic = load_critic(critic_dir)
    info = json.loads((critic_dir / "critic.json").read_text())
    table = ChunkTable.load(run / "collect" / "chunks.safetensors")

    if episodes == "all":
        chosen = list(range(len(table.episodes)))
    elif info["split"].get(episodes):
        chosen = info["split"][episodes]
    else:
        raise typer.BadParameter(f"critic {critic_dir} has no {episodes!r} episodes in its split")
    if task is not None:
        chosen = [e for e in chosen if table.episodes[e]["task"] == task]
    rows = rows_of(table, chosen)
    # the recorded observation each chunk was sampled from (the critic report's reader of the episode files)
    obs = observations_at(run / "collect", table, rows)
    if len(obs) != len(rows):
        raise ValueError(f"{run / 'collect'}: {len(rows) - len(obs)} chunk starts have no recorded frame")
    height = np.array([o[ENV_STATE_KEY][2] for o in obs])  # the first object's z
    first = table.step[rows] == 0  # every episode's first chunk starts at step 0
    start = dict(zip(table.episode[rows][first].tolist(), height[first.numpy()], strict=True))
    carried = [i for i, r in enumerate(rows.tolist()) if height[i] - start[int(table.episode[r])] >= lift]
    if len(carried) > max_rows:
        carried = [carried[i] for i in np.linspace(0, len(carried) - 1, max_rows).astype(int)]
    if not carried:
        raise typer.BadParameter(f"no chunk start of the chosen episodes has the object lifted ≥ {lift} m")
    batch = stack_observations([obs[i] for i in carried])
    steps = policy.config.n_action_steps
    with torch.no_grad():
        context = policy.encode(batch)
        noise = torch.randn(len(carried), policy.spec.chunk_len, policy.spec.padded_dim,
                            generator=torch.Generator().manual_seed(0))
        arms = [("unguided", None)] + [(f"ρ={r}", float(r)) for r in comma_list(rho)]
        print(f"{len(carried)} chunk starts with the object carried ({episodes} episodes of {critic_dir}, {run})")
        print("| arm | dx | dy | dz | gripper | gripper < 0 (opening) |")
        print("|---|---|---|---|---|---|")
        for name, r in arms:
            guidance = None if r is None else Guidance(critic, GuidanceConfig(relative=r))
            chunk = sample_chunks(policy, context=context, noise=noise, guidance=guidance).chunk
            a = policy.decode_actions(chunk)[:, :steps]  # the executed actions
            print(f"| {name} | {a[..., 0].mean():+.3f} | {a[..., 1].mean():+.3f} | {a[..., 2].mean():+.3f} | "
                  f"{a[..., 6].mean():+.3f} | {(a[..., 6] < 0).float().mean():.1%} |")


if __name__ == "__main__":
    typer.run(main)
