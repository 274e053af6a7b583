"""Record the outcomes of a fixed set of episodes (toy and MetaWorld; unguided, guided and a control) as a golden
file, ``episodes.json`` beside this script.

The committed file was written by the code *before* the guided-inference runtime replaced the hand-built runners
(issue #12, recorded at commit df4aafa on top of 4f84a31); ``tests/test_runtime.py`` replays the same episodes through the runtime and asserts
bit-identical outcomes and chunks. Re-record only when a change is *meant* to alter episodes:

    uv run python tests/golden/record_episodes.py
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
TOY_SEEDS = [0, 1, 2, 3]
METAWORLD_TASK = "hand-insert"
METAWORLD_SEEDS = [0, 1]
METAWORLD_MAX_STEPS = 45
TOY_ARMS = {"unguided": None, "guided": {"relative": 0.5}, "zero": {"relative": 0.5, "control": "zero"},
            "scaled": {"scale": 0.3, "clip": 2.0}}
METAWORLD_ARMS = {"unguided": None, "guided": {"relative": 0.3}}


def toy_critic(features, chunk):
    """An analytic critic: the first action should point from the position to the goal (state = pos, goal)."""
    state = features["state"]
    goal = state[:, 2:] - state[:, :2]  # (B, 2)
    return -(chunk[:, 0, :] - goal).pow(2).sum(1) - 0.1 * chunk.pow(2).sum((1, 2))


def metaworld_critic(policy):
    """A fixed random ensemble over the compact policy's features (exercises the prepared-critic path)."""
    from gaflow.critic.models import EnsembleMLPCritic

    dims = {"observation": policy.config.hidden_dim, "state": 4}
    torch.manual_seed(1234)
    return EnsembleMLPCritic(dims, policy.spec.chunk_len, policy.spec.action_dim, hidden=(32,), num_members=2).eval()


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:20]


def outcome(success, length, first_success_step, chunks) -> dict:
    return {"success": bool(success), "length": int(length), "first_success_step": first_success_step,
            "chunks": len(chunks), "chunk_sha": digest(chunks)}


def record() -> dict:
    """Run the fixed episodes through the guided-inference runtime (the only execution path since issue #12).

    The committed ``episodes.json`` was recorded with the pre-runtime path (``gaflow.rollouts.run_episode`` with a
    hand-built ``Guidance`` and ``SamplerConfig``) at commit df4aafa; this function must reproduce it bit for bit.
    """
    from gaflow.envs.registry import make_env
    from gaflow.policies.registry import load_policy
    from gaflow.runtime import GuidedRuntime, run_episode

    out: dict = {"toy": {}, "metaworld": {}}
    policy = load_policy("toy:default")
    for task in ("toy-reach", "toy-reach-far"):
        env = make_env("toy", task)
        for arm, g in TOY_ARMS.items():
            runtime = GuidedRuntime(policy, critic=toy_critic if g else None, guidance=g, noise_seed=7)
            for seed in TOY_SEEDS:
                rec = run_episode(env, runtime, seed=seed)
                out["toy"][f"{task}/{arm}/{seed}"] = outcome(rec.success, rec.length, rec.first_success_step,
                                                             [c.chunk for c in rec.chunks])
    policy = load_policy("compact:builtin")
    critic = metaworld_critic(policy)
    env = make_env("metaworld", METAWORLD_TASK, image_size=policy.config.image_size, max_steps=METAWORLD_MAX_STEPS)
    for arm, g in METAWORLD_ARMS.items():
        runtime = GuidedRuntime(policy, critic=critic if g else None, guidance=g)
        for seed in METAWORLD_SEEDS:
            rec = run_episode(env, runtime, seed=seed)
            out["metaworld"][f"{METAWORLD_TASK}/{arm}/{seed}"] = outcome(
                rec.success, rec.length, rec.first_success_step, [c.chunk for c in rec.chunks])
    env.close()
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    result = record()
    (HERE / "episodes.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    json.dump(result, sys.stdout, indent=1)
