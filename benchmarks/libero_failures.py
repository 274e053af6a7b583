"""How did a LIBERO pick-and-place policy's failed rollouts end? (BENCHMARKS.md §11, §11b)

For every failed episode of a collect folder (optionally one task), reads the last recorded frame and sorts it:
the manipulated object (the first object in the environment-state layout) more than ``--near`` metres (xy) from the
target object → "far from target"; within it with the gripper open → "released near target"; within it with the
gripper closed → "held near target" (a time-out while carrying: LIBERO's `On` fires on contact, so lowering the
object would have finished the task). Prints counts and the median height above the target.

    uv run python benchmarks/libero_failures.py --data runs/libero_t0v2/collect --task 0
    uv run python benchmarks/libero_failures.py --data runs/libero_study/collect --task 5
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer


def main(data: Path = typer.Option(..., help="collect folder (episodes/ and chunks.safetensors)"),
         task: str = typer.Option(..., help="LIBERO task id (libero_spatial)"),
         suite: str = typer.Option("libero_spatial"),
         target: str = typer.Option("plate_1", help="object the task places onto (environment-state name prefix)"),
         near: float = typer.Option(0.05, help="xy distance to the target that counts as near (m)"),
         open_above: float = typer.Option(0.02, help="gripper finger position above which it counts as open")) -> None:
    from gaflow.collect import episode_path, read_episode
    from gaflow.critic.data import ChunkTable
    from gaflow.envs.libero import LiberoEnv

    names = LiberoEnv(suite, int(task)).environment_state_names
    if f"{target}.pos.x" not in names:
        raise typer.BadParameter(f"no object {target!r} in task {task}'s environment state ({names[::7]})")
    t0 = names.index(f"{target}.pos.x")
    episodes = [e for e in ChunkTable.load(data / "chunks.safetensors").episodes if e["task"] == task]
    if not episodes:
        raise typer.BadParameter(f"{data} has no episodes of task {task!r}")
    ends: dict[str, list[float]] = {}
    for ep in episodes:
        if ep["success"]:
            continue
        _, frames = read_episode(episode_path(data, ep["task"], ep["seed"]))
        env, state = frames["frame.env_state"][-1].numpy(), frames["frame.state"][-1].numpy()
        obj, goal = env[0:3], env[t0:t0 + 3]
        if np.linalg.norm(obj[:2] - goal[:2]) > near:
            kind = "far from target"
        else:
            kind = "released near target" if state[6] > open_above else "held near target"
        ends.setdefault(kind, []).append(float(obj[2] - goal[2]))
    failed = sum(len(v) for v in ends.values())
    print(f"{data}, task {task}: {failed} failed of {len(episodes)} episodes (last recorded frame)")
    for kind, heights in sorted(ends.items(), key=lambda kv: -len(kv[1])):
        print(f"  {kind}: {len(heights)} (median height above the target {100 * np.median(heights):.1f} cm)")


if __name__ == "__main__":
    typer.run(main)
