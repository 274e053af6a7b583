"""The chunk table: one row per predicted chunk of a recorded rollout, everything a critic trains on.

Written by ``gaflow collect`` next to its LeRobotDataset (``chunks.safetensors``), so critic training never re-runs
the policy. Tensors (``N`` rows):

* ``chunk`` ``(N, H, action_dim)`` — the predicted chunk in the policy's normalised action space, real dims only;
* ``feature.<key>`` ``(N, F)`` — the policy's critic features for the chunk's observation (``observation``, ``task``,
  ``state``, ...);
* ``episode`` ``(N,)`` — episode row index into ``episodes`` (metadata); ``step`` — env step at which the chunk
  started; ``executed`` — how many of its steps were executed; ``next_row`` — the episode's next chunk or −1;
* ``success`` ``(N,)`` — did the episode ever succeed; ``steps_to_success`` — env steps from this chunk's start to
  the first success (−1 if never); ``reward`` — 1 if the first success happened during this chunk's executed steps.

Metadata (JSON in the safetensors header): ``episodes`` — list of ``{task, seed, success, first_success_step,
length}``; ``tasks`` — task strings; ``policy`` — policy id/spec.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from gaflow.io import atomic_save_safetensors

REQUIRED = ("chunk", "episode", "step", "executed", "next_row", "success", "steps_to_success", "reward")


@dataclass
class ChunkTable:
    chunk: torch.Tensor
    features: dict[str, torch.Tensor]
    episode: torch.Tensor
    step: torch.Tensor
    executed: torch.Tensor
    next_row: torch.Tensor
    success: torch.Tensor
    steps_to_success: torch.Tensor
    reward: torch.Tensor
    episodes: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.chunk.shape[0]
        if self.chunk.dim() != 3:
            raise ValueError(f"chunk table: 'chunk' must be (N, H, action_dim), got {tuple(self.chunk.shape)}")
        for name in REQUIRED[1:]:
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"chunk table: column {name!r} has {getattr(self, name).shape[0]} rows, expected {n}")
        for k, v in self.features.items():
            if v.shape[0] != n:
                raise ValueError(f"chunk table: feature {k!r} has {v.shape[0]} rows, expected {n}")
        if n and (int(self.next_row.min()) < -1 or int(self.next_row.max()) >= n):
            raise ValueError(f"chunk table: column 'next_row' must hold row indices in [-1, {n}); got "
                             f"[{int(self.next_row.min())}, {int(self.next_row.max())}]")
        if n and self.episodes and (int(self.episode.min()) < 0 or int(self.episode.max()) >= len(self.episodes)):
            raise ValueError(f"chunk table: column 'episode' must index the {len(self.episodes)} episodes; got "
                             f"[{int(self.episode.min())}, {int(self.episode.max())}]")

    def __len__(self) -> int:
        return self.chunk.shape[0]

    @classmethod
    def from_episode(cls, chunk: torch.Tensor, features: dict[str, torch.Tensor], step: torch.Tensor,
                     executed: torch.Tensor, first_success_step: int | None, episode: dict) -> ChunkTable:
        """One episode's rows, labelled from its first success (the one labelling rule of ``gaflow collect`` and
        ``gaflow import-rollouts``; :meth:`concat` joins episodes).

        ``chunk`` ``(n, H, action_dim)``, ``step``/``executed`` ``(n,)``: each chunk's start step and how many of
        its steps ran; ``first_success_step``: env steps taken when success first fired (1-based), None if never.
        ``steps_to_success`` = ``first_success_step − step`` (−1 if never), ``reward`` = 1 on the chunk whose
        executed steps contain the first success, ``next_row`` links consecutive chunks.
        """
        step, executed = torch.as_tensor(step, dtype=torch.long), torch.as_tensor(executed, dtype=torch.long)
        n = step.shape[0]
        if first_success_step is None:
            sts = torch.full((n,), -1, dtype=torch.long)
            reward = torch.zeros(n, dtype=torch.long)
        else:
            sts = first_success_step - step
            reward = ((step < first_success_step) & (step + executed >= first_success_step)).long()
        return cls(chunk=chunk, features=features, episode=torch.zeros(n, dtype=torch.long), step=step,
                   executed=executed, next_row=torch.where(torch.arange(n) < n - 1, torch.arange(n) + 1, -1),
                   success=torch.full((n,), int(first_success_step is not None), dtype=torch.long),
                   steps_to_success=sts, reward=reward, episodes=[episode])

    def nonfinite_fields(self) -> list[str]:
        """Names of the float columns (``chunk``, ``feature.<key>``) holding NaN or inf."""
        cols = {"chunk": self.chunk, **{f"feature.{k}": v for k, v in self.features.items()}}
        return [name for name, v in cols.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]

    @property
    def episode_task(self) -> list[str]:
        return [e["task"] for e in self.episodes]

    def row_tasks(self) -> list[str]:
        tasks = self.episode_task
        return [tasks[int(i)] for i in self.episode]

    def select(self, rows: torch.Tensor) -> ChunkTable:
        """A sub-table of ``rows`` (``next_row`` re-indexed; links leaving the subset become −1)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        remap = torch.full((len(self),), -1, dtype=torch.long)
        remap[rows] = torch.arange(len(rows))
        nxt = self.next_row[rows]
        nxt = torch.where(nxt >= 0, remap[nxt.clamp_min(0)], nxt)
        cols = {name: getattr(self, name)[rows] for name in REQUIRED if name != "next_row"}
        return ChunkTable(**cols, next_row=nxt, features={k: v[rows] for k, v in self.features.items()},
                          episodes=self.episodes, meta=dict(self.meta))

    @staticmethod
    def concat(tables: list[ChunkTable]) -> ChunkTable:
        """Concatenate tables; episode indices and next-row links are offset."""
        if not tables:
            raise ValueError("cannot concatenate zero chunk tables")
        keys = set(tables[0].features)
        for t in tables[1:]:
            if t.chunk.shape[1:] != tables[0].chunk.shape[1:] and len(t) and len(tables[0]):
                raise ValueError(f"chunk tables have different chunk shapes (H, action_dim): "
                                 f"{tuple(tables[0].chunk.shape[1:])} vs {tuple(t.chunk.shape[1:])}")
            if set(t.features) != keys:
                raise ValueError(f"chunk tables have different features: {sorted(keys)} vs {sorted(t.features)}")
        cols: dict[str, list[torch.Tensor]] = {n: [] for n in REQUIRED}
        feats: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        episodes: list[dict] = []
        offset = 0
        for t in tables:
            for n in REQUIRED:
                v = getattr(t, n)
                if n == "episode":
                    v = v + len(episodes)
                elif n == "next_row":
                    v = torch.where(v >= 0, v + offset, v)
                cols[n].append(v)
            for k in keys:
                feats[k].append(t.features[k])
            episodes.extend(t.episodes)
            offset += len(t)
        return ChunkTable(**{n: torch.cat(v) for n, v in cols.items()},
                          features={k: torch.cat(v) for k, v in feats.items()}, episodes=episodes,
                          meta=dict(tables[0].meta))

    def save(self, path: str | os.PathLike) -> None:
        """Atomic write (temporary file in the same folder, then rename)."""
        path = Path(path)
        tensors = {n: getattr(self, n).contiguous() for n in REQUIRED}
        tensors.update({f"feature.{k}": v.contiguous() for k, v in self.features.items()})
        meta = {"episodes": json.dumps(self.episodes), "meta": json.dumps(self.meta)}
        atomic_save_safetensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ChunkTable:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"chunk table {path} does not exist (write it with `gaflow collect`)")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises several types for truncated/corrupt files
            raise ValueError(f"chunk table {path} is not a readable safetensors file: {e}") from e
        missing = [n for n in REQUIRED if n not in tensors]
        if missing:
            raise ValueError(f"chunk table {path} lacks column(s) {missing}")
        feats = {k[len("feature."):]: v for k, v in tensors.items() if k.startswith("feature.")}
        try:
            table = cls(**{n: tensors[n] for n in REQUIRED}, features=feats,
                        episodes=json.loads(meta.get("episodes", "[]")), meta=json.loads(meta.get("meta", "{}")))
        except (ValueError, json.JSONDecodeError) as e:
            raise ValueError(f"chunk table {path}: {str(e).removeprefix('chunk table: ')}") from e
        bad = table.nonfinite_fields()
        if bad:
            # refused here, where the file is known, rather than as a NaN loss (or worse) deep in train-critic
            raise ValueError(f"chunk table {path} has NaN/inf values in {bad}")
        return table


def episode_rows(table: ChunkTable) -> dict[int, torch.Tensor]:
    """Row indices of each episode."""
    order = torch.argsort(table.episode, stable=True)
    eps, counts = torch.unique_consecutive(table.episode[order], return_counts=True)
    return {int(e): rows for e, rows in zip(eps, torch.split(order, counts.tolist()), strict=True)}
