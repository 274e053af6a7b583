"""Compare critic inputs/targets on one collect folder by held-out AUC (BENCHMARKS.md §11b).

Trains each variant with two training seeds (each seed also draws its own episode split) and prints the AUC for
eventual success on the variant's own validation episodes, overall and from env step 120 on ("late"), and the
epoch early stopping kept.

    uv run python benchmarks/critic_variants.py runs/libero_t0v2/collect/chunks.safetensors

Takes ~10 min on 2 cores for a 300-episode LIBERO table.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import torch


def main(path: str) -> None:
    from gaflow.critic.data import ChunkTable
    from gaflow.critic.quality import critic_values, roc_auc
    from gaflow.critic.train import CriticTrainConfig, rows_of, train_critic

    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    t = ChunkTable.load(path)
    print(len(t), "chunks,", len(t.episodes), "episodes, success", np.mean([e["success"] for e in t.episodes]))
    base = ("observation", "task", "state")
    variants = [(base, "success_to_go", (256, 256)), (base + ("env_state",), "success_to_go", (256, 256)),
                (("state", "env_state"), "success_to_go", (256, 256)), (base + ("env_state",), "binary", (256, 256)),
                (base + ("env_state",), "success_to_go", (128, 128))]
    for feats, target, hidden in variants:
        res = []
        for seed in (0, 1):
            critic, m, split = train_critic(t, CriticTrainConfig(features=feats, target=target, hidden=hidden,
                                                                 seed=seed), progress=False)
            va = rows_of(t, split.validation)
            q = critic_values(critic, t, va).mean(0).numpy()
            lab, step = t.success[va].bool().numpy(), t.step[va].numpy()
            res.append((roc_auc(q, lab), roc_auc(q[step >= 120], lab[step >= 120]), m["best_epoch"]))
        print(feats, target, hidden, " ".join(f"auc {a:.3f} late {b:.3f} ep {c}" for a, b, c in res), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
