"""Time to train an ensemble critic on a chunk table of a given size (issue: 3 critics on 20k chunks ≤ 2 min).

    uv run python benchmarks/critic_training.py [--chunks 20000 --members 3 --epochs 40 --threads 2]

The table is synthetic but shaped like the compact policy's (observation 128-d, task 384-d, state 4-d features;
chunks 8×4) and success depends on the chunk, so early stopping behaves as on real data. Prints wall time,
epochs run and the held-out AUC.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gaflow.critic.data import ChunkTable
from gaflow.critic.quality import critic_quality
from gaflow.critic.train import CriticTrainConfig, rows_of, train_critic


def synthetic(chunks: int, per_episode: int = 5, seed: int = 0) -> ChunkTable:
    g = torch.Generator().manual_seed(seed)
    n_ep = chunks // per_episode
    rows = n_ep * per_episode
    u = torch.randn(8, 4, generator=g)
    chunk = torch.randn(rows, 8, 4, generator=g)
    episode = torch.arange(n_ep).repeat_interleave(per_episode)
    score = (chunk * u).sum((1, 2)).view(n_ep, per_episode).mean(1)
    success = (score + 0.1 * torch.randn(n_ep, generator=g)) > 0
    step = torch.arange(per_episode).repeat(n_ep) * 4
    last = step == step.max()
    return ChunkTable(
        # observation/task features are per episode (as a policy's would be, nearly), state varies per chunk
        chunk=chunk, features={"observation": torch.randn(n_ep, 128, generator=g)[episode],
                               "task": torch.randn(4, 384, generator=g)[episode % 4],
                               "state": torch.randn(rows, 4, generator=g)},
        episode=episode, step=step, executed=torch.full((rows,), 4), next_row=torch.where(last, -1, torch.arange(rows) + 1),
        success=success[episode].long(), steps_to_success=torch.where(success[episode], step.max() + 4 - step, -1),
        reward=(success[episode] & last).long(),
        episodes=[{"task": "push", "seed": i, "success": bool(success[i])} for i in range(n_ep)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=20_000)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    table = synthetic(args.chunks)
    cfg = CriticTrainConfig(members=args.members, epochs=args.epochs)
    t0 = time.perf_counter()
    critic, metrics, split = train_critic(table, cfg, progress=True)
    wall = time.perf_counter() - t0
    q = critic_quality(critic, table, rows_of(table, split.validation))
    out = {"chunks": len(table), "members": args.members, "epochs_run": metrics["epochs_run"], "wall_s": wall,
           "s_per_epoch": wall / metrics["epochs_run"], "val_auc": q["auc"], "threads": args.threads}
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
