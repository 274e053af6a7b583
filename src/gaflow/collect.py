"""``gaflow collect``: run a base policy (unguided, or guided with a given config) on ``(task, seed)`` episodes and
record everything a critic needs.

Layout of an output folder::

    <out>/collect.json              the job's config (a re-run must match it: resume, never mix jobs)
    <out>/episodes/<task>/<seed>.safetensors   one finished episode, written atomically (tmp file + rename)
    <out>/chunks.safetensors        the chunk table (gaflow.critic.data.ChunkTable), assembled at the end
    <out>/episodes.jsonl            one JSON summary per episode (success, first success step, length, latency)
    <out>/dataset/                  LeRobotDataset v3 of the executed frames (state, env state, image, action,
                                    task, episode.seed, episode.success, next.success)

Crash safety: workers return episode payloads and only the driver writes, so an episode is either fully present
(its file was renamed into place) or absent; killing the job at any moment and re-running the same command runs
only the missing episodes. Workers die with the driver (:mod:`gaflow.runtime.executor`). The chunk table and the dataset are
rebuilt from the episode files in a fixed (task, seed) order, so a resumed job produces exactly what an
uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from gaflow.critic.data import ChunkTable
from gaflow.envs.base import EnvInfo
from gaflow.evaluation.ledger import seed_ranges, test_seeds_of
from gaflow.evaluation.splits import SplitViolation
from gaflow.io import atomic_save_safetensors, atomic_write_text, job_folder, portable_paths
from gaflow.observations import ENV_STATE_KEY, IMAGE_KEY, STATE_KEY
from gaflow.runtime import RuntimeSpec, needs_critic, run_episode
from gaflow.runtime.build import release, runtime_and_env
from gaflow.runtime.executor import Executor, chunked, make_executor, run_jobs, torch_threads


@dataclass
class CollectConfig:
    policy: str  # e.g. "compact:runs/policy", "lerobot:<dir>", "toy:default"
    env: str = "metaworld"  # metaworld | libero:<suite> | toy
    tasks: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    guidance: dict | None = None  # a GuidanceConfig dict; needs critic
    critic: str | None = None  # critic folder (gaflow train-critic)
    n_action_steps: int | None = None
    num_steps: int | None = None
    num_candidates: int = 1
    select: str = "first"
    noise_seed: int = 0
    image_size: int | None = None
    max_steps: int | None = None
    record_images: bool = True

    def key(self) -> dict:
        """The fields that define the job (a resume must match them); ``workers`` etc. are not part of it."""
        return dataclasses.asdict(self)


PATH_FIELDS = ("policy", "critic")  # stored relative to the run folder, so it can move


def episode_path(out: Path, task: str, seed: int) -> Path:
    return out / "episodes" / str(task) / f"{int(seed)}.safetensors"


def runtime_spec(cfg: CollectConfig) -> RuntimeSpec:
    if needs_critic(cfg.guidance, cfg.select) and cfg.critic is None:
        raise ValueError("guided collection (or best-of-N) needs --critic")
    return RuntimeSpec(policy=cfg.policy, critic=cfg.critic, guidance=cfg.guidance, num_steps=cfg.num_steps,
                       num_candidates=cfg.num_candidates, select=cfg.select, noise_seed=cfg.noise_seed,
                       n_action_steps=cfg.n_action_steps)


def collect_episodes(cfg_dict: dict, jobs: list[tuple[str, int]]) -> list[dict]:
    """Worker: run ``(task, seed)`` episodes and *return* each one's payload (the driver writes it)."""
    cfg = CollectConfig(**cfg_dict)
    spec = runtime_spec(cfg)
    payloads = []
    with torch_threads(1):
        for task, seed in jobs:
            runtime, env = runtime_and_env(spec, cfg.env, task, image_size=cfg.image_size,
                                           max_steps=cfg.max_steps, record_images=cfg.record_images)
            rec = run_episode(env, runtime, seed=seed)
            rec.task = task  # the job's task name (an env's own `task` attribute may be an object, e.g. LIBERO's)
            tensors, meta = episode_payload(rec, env.frames, runtime.policy.spec.action_dim)
            payloads.append({"task": task, "seed": int(seed), "tensors": tensors, "meta": meta})
    return payloads


def episode_payload(rec, frames: list[dict], action_dim: int) -> tuple[dict[str, torch.Tensor], dict]:
    """One episode → the tensors (chunk rows + frames) and metadata of its episode file."""
    t: dict[str, torch.Tensor] = {}
    if rec.chunks:
        t["chunk"] = torch.stack([c.chunk[:, :action_dim] for c in rec.chunks]).float()
        for k in rec.chunks[0].features:
            t[f"feature.{k}"] = torch.stack([c.features[k] for c in rec.chunks]).float()
        t["step"] = torch.tensor([c.executed[0] for c in rec.chunks], dtype=torch.long)
        t["executed"] = torch.tensor([c.executed[1] - c.executed[0] for c in rec.chunks], dtype=torch.long)
        t["latency_s"] = torch.tensor([c.latency_s for c in rec.chunks], dtype=torch.float64)
    if frames:
        t["frame.state"] = torch.from_numpy(np.stack([f["state"] for f in frames]))
        t["frame.env_state"] = torch.from_numpy(np.stack([f["env_state"] for f in frames]))
        t["frame.action"] = torch.from_numpy(np.stack([f["action"] for f in frames]))
        t["frame.success"] = torch.tensor([f["success"] for f in frames], dtype=torch.float32)
        if "image" in frames[0]:
            t["frame.image"] = torch.from_numpy(np.stack([f["image"] for f in frames]))
    meta = rec.summary()
    meta["guidance"] = [c.guidance for c in rec.chunks] if rec.chunks and rec.chunks[0].guidance else None
    meta["task_description"] = frames[0]["task"] if frames else ""
    return t, meta


def write_episode(out: Path, payload: dict) -> None:
    """Driver: one episode payload → one safetensors file, atomically."""
    atomic_save_safetensors(episode_path(out, payload["task"], payload["seed"]), payload["tensors"],
                            {"episode": json.dumps(payload["meta"])})


def read_episode(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["episode"])
            return meta, {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"episode file {path} is unreadable ({e}); delete it and re-run to collect it again") from e


def collect(cfg: CollectConfig, out: str | os.PathLike, workers: int = 2, progress: bool = True,
            write_dataset: bool = True, executor: Executor | None = None, extend: bool = False) -> dict:
    """Run (or resume) a collection job. Returns a summary dict.

    ``extend``: the folder may hold the same job on a subset of these seeds (more rollouts of the same policy):
    its episodes are kept and only the new seeds run."""
    if not cfg.tasks or not cfg.seeds:
        raise ValueError("collect needs at least one task and one seed")
    runtime_spec(cfg)  # fail before any work on a config that cannot run
    test = test_seeds_of(cfg.env, cfg.seeds)
    if test:
        raise SplitViolation(f"collect records critic data, which never comes from test episodes: {len(test)} of the "
                             f"seeds are in {cfg.env}'s test split ({seed_ranges(test)}); use the critic split "
                             "(--seeds critic:N)")
    if extend:
        _extend_job(Path(out), cfg)
    out = job_folder(out, cfg.key(), "collect.json", paths=PATH_FIELDS)
    for stale in out.glob("episodes/*/.*.tmp"):  # left by a killed driver mid-write; never renamed into place
        stale.unlink()
    todo = [(t, s) for t in cfg.tasks for s in cfg.seeds if not episode_path(out, t, s).exists()]
    total = len(cfg.tasks) * len(cfg.seeds)
    t0 = time.perf_counter()
    counts = {"done": 0, "success": 0}

    def write(payloads: list[dict]) -> str:
        for p in payloads:
            write_episode(out, p)
        counts["done"] += len(payloads)
        counts["success"] += sum(p["meta"]["success"] for p in payloads)
        return f"success {counts['success']}/{counts['done']}"

    # small batches keep the bar moving; a worker keeps its policy and env between batches of one task
    jobs = [(cfg.key(), b) for b in chunked(todo, 4)]
    executor = executor or make_executor(workers)
    try:
        run_jobs(executor, collect_episodes, jobs, label="collect", total=total, completed=total - len(todo),
                 progress=progress, on_result=write)
    finally:
        release()
    elapsed = time.perf_counter() - t0
    assembled = (out / "chunks.safetensors").exists() and (not write_dataset or (out / "dataset").exists())
    if not todo and assembled and (out / "chunks.safetensors").stat().st_mtime >= _newest_episode(out):
        table = ChunkTable.load(out / "chunks.safetensors")  # a finished job: nothing new to assemble
    else:
        table = assemble(out, cfg, write_dataset=write_dataset, progress=progress)
    summary = {"episodes": total, "collected_now": len(todo), "seconds": elapsed, "chunks": len(table),
               "success_rate": float(np.mean([e["success"] for e in table.episodes])) if table.episodes else 0.0}
    return summary


def _newest_episode(out: Path) -> float:
    return max((p.stat().st_mtime for p in out.glob("episodes/*/*.safetensors")), default=0.0)


def _extend_job(out: Path, cfg: CollectConfig) -> None:
    """Rewrite ``out``'s collect.json to ``cfg`` when it describes the same job on a subset of ``cfg.seeds``."""
    path = out / "collect.json"
    if not path.exists():
        return
    previous = json.loads(path.read_text())
    new = json.loads(json.dumps(portable_paths(cfg.key(), out, PATH_FIELDS)))
    same = {k: v for k, v in previous.items() if k != "seeds"} == {k: v for k, v in new.items() if k != "seeds"}
    if same and set(previous.get("seeds", [])) <= set(new["seeds"]) and previous != new:
        atomic_write_text(path, json.dumps(new, indent=2))


def assemble(out: Path, cfg: CollectConfig, write_dataset: bool = True, progress: bool = True) -> ChunkTable:
    """Build chunks.safetensors, episodes.jsonl and the LeRobotDataset from the episode files, in (task, seed)
    order."""
    parts, episodes, frames = [], [], []
    for task in cfg.tasks:
        for seed in cfg.seeds:
            meta, t = read_episode(episode_path(out, task, seed))
            episodes.append(meta)
            frames.append((meta, t))
            first = meta["first_success_step"]
            parts.append(ChunkTable.from_episode(  # one episode; concat offsets episode ids and next-row links
                chunk=t.get("chunk", torch.zeros(0, 1, 1)),
                features={k[len("feature."):]: v for k, v in t.items() if k.startswith("feature.")},
                step=t.get("step", torch.zeros(0, dtype=torch.long)),
                executed=t.get("executed", torch.zeros(0, dtype=torch.long)), first_success_step=first,
                episode={"task": meta["task"], "seed": meta["seed"], "success": meta["success"],
                         "first_success_step": first, "length": meta["length"],
                         "description": meta.get("task_description", "")}))
    table = ChunkTable.concat(parts)
    table.meta = {"policy": cfg.policy, "env": cfg.env, "guidance": cfg.guidance, "noise_seed": cfg.noise_seed}
    table.save(out / "chunks.safetensors")
    atomic_write_text(out / "episodes.jsonl", "".join(json.dumps(e) + "\n" for e in episodes))
    if write_dataset:
        write_lerobot_dataset(out / "dataset", frames, progress=progress, env=cfg.env)
    return table


def write_lerobot_dataset(root: Path, episodes: list[tuple[dict, dict[str, torch.Tensor]]], progress: bool = True,
                          *, env: str | EnvInfo):
    """Executed frames as a LeRobotDataset v3, through gaflow's one writer (:class:`gaflow.data.writer.DatasetWriter`:
    built in a temporary sibling, swapped into place; an error leaves ``root`` as it was).

    ``env``: the env spec (``"metaworld"``, ``"libero:<suite>?..."``, ``"toy"``) or its
    :class:`~gaflow.envs.base.EnvInfo` — fps, names and robot type come from it; pass the ``EnvInfo`` built with
    the same options as the env (``env_info(cfg.env, task, image_size=...)``) when they change the features; given
    a spec, MetaWorld's image size is read from the recorded frames. Only the observations the episodes recorded are
    stored (e.g. no image when ``record_images`` was off). ``progress`` is unused (LeRobot's own per-episode bars
    are silenced).
    """
    from gaflow.data.writer import DatasetWriter
    from gaflow.envs.registry import env_info, parse_env_spec

    recorded = [(meta, t) for meta, t in episodes if "frame.state" in t]
    if not recorded:
        return
    first = recorded[0][1]
    stored = {STATE_KEY: "frame.state", ENV_STATE_KEY: "frame.env_state", IMAGE_KEY: "frame.image"}
    if not isinstance(env, EnvInfo):
        opts = {}
        if "frame.image" in first and parse_env_spec(env)[0] == "metaworld":
            opts["image_size"] = int(first["frame.image"].shape[1])  # the size the policy's env rendered at
        env = env_info(env, recorded[0][0]["task"], **opts)
    info = env.select(k for k in env.observation_keys if stored.get(k) in first)
    with DatasetWriter(root, info, ("episode.seed", "episode.success", "next.success"), overwrite=True,
                       repo_id=f"gaflow/{root.parent.name}") as writer:
        for meta, t in recorded:
            for i in range(t["frame.state"].shape[0]):
                writer.add_frame({key: t[stored[key]][i] for key in info.observation_keys}
                                 | {"action": t["frame.action"][i], "next.success": bool(t["frame.success"][i]),
                                    "task": meta.get("task_description") or meta["task"]})
            writer.save_episode({"episode.seed": meta["seed"], "episode.success": bool(meta["success"])})
