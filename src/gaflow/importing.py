"""``gaflow import-rollouts``: critic training data from any LeRobotDataset v3 (e.g. episodes recorded on a real
robot with LeRobot's recorder) for a given frozen base policy.

The output folder trains with ``gaflow train-critic`` exactly like a ``gaflow collect`` folder: it holds a chunk
table (:class:`gaflow.critic.data.ChunkTable`) built the way collect builds one:

* **chunk starts** every ``n_action_steps`` frames from frame 0 (the policy's default, as collect executes), up to
  the episode's *end* — the first success (frames after it are not chunk starts: collect's episodes stop there),
  or the last recorded frame;
* **features**: the recorded observation at each start, batched as LeRobotDataset returns it (images CHW float in
  [0, 1] — the format ``policy.encode`` takes) and re-encoded with the policy: ``policy.critic_features``;
* **chunk** ``(H, action_dim)``: the recorded actions from the start frame on — the chunk the policy would have been
  trained to produce there — in the policy's normalised space (``policy.normalize_actions``, the inverse of
  ``decode_actions``). A window running past the episode's last frame repeats its last action, as LeRobot's
  training windows do (``action_is_pad``);
* **labels**, one per episode, from the first source that exists:

  1. ``labels``: a JSON object ``{"<episode_index>": true|false, ...}`` or a CSV with columns
     ``episode_index,success`` (every imported episode needs an entry);
  2. ``success_key``: a dataset column; a per-frame column (``next.success``, ``next.reward`` > 0.5, ...) or a
     per-episode one (a name starting with ``episode.``, constant over the episode);
  3. ``next.success`` (per frame: success right after the frame's action, as gaflow writes it), else
     ``episode.success``.

  With a per-frame column the first success is exact: ``first_success_step`` = index of the first true frame + 1
  (1-based, collect's convention) and ``steps_to_success`` = ``first_success_step − step``. With only an episode
  label, success is placed at the end of the recording (``first_success_step`` = the episode's length, so
  ``steps_to_success`` = ``length − step``): a recording that stops when the task is done is exact; one that runs
  on after it makes early chunks look further from success than they were (``train-critic --target binary``
  ignores timing). ``executed`` = ``min(n_action_steps, end − step)``, ``reward`` = 1 on the chunk whose executed
  steps contain the first success, ``next_row`` links an episode's chunks — as in collect.

Layout::

    <out>/import.json                      the job's config (a re-run must match it: resume, never mix jobs)
    <out>/episodes/<episode_index>.safetensors   one re-encoded episode (chunks, features, starts), atomically
    <out>/chunks.safetensors               the chunk table, assembled at the end
    <out>/episodes.jsonl                   one JSON summary per episode

Resumable: a killed import re-run with the same command encodes only the episodes whose files are missing (or
were cut at another end because the labels changed), then re-assembles the table.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from gaflow.critic.data import ChunkTable
from gaflow.data.dataset import check_features, load_dataset, read_info
from gaflow.io import atomic_save_safetensors, atomic_write_text, job_folder
from gaflow.observations import ACTION_KEY, TASK_KEY
from gaflow.runtime import GuidedRuntime
from gaflow.runtime.executor import InProcessExecutor, run_jobs

PATH_FIELDS = ("policy", "dataset", "labels")  # stored relative to the run folder, so it can move
FRAME_SUCCESS_KEY = "next.success"
EPISODE_SUCCESS_KEY = "episode.success"
EPISODE_PREFIX = "episode."  # gaflow's convention (gaflow.data.writer.COLUMNS): constant over an episode


@dataclass
class ImportConfig:
    dataset: str  # LeRobotDataset v3 folder
    policy: str  # the frozen base policy: compact:<dir>, compact:builtin, lerobot:<dir>, toy:default
    labels: str | None = None  # JSON/CSV file: episode_index → success (overrides the dataset's columns)
    success_key: str | None = None  # dataset column with the label (default: next.success, else episode.success)
    n_action_steps: int | None = None  # frames between chunk starts (default: the policy's n_action_steps)
    episodes: list[int] | None = None  # episode indices to import (default: all)

    def key(self) -> dict:
        """The fields that define the job (a resume must match them)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EpisodeLabel:
    success: bool
    first_success_step: int | None  # 1-based env step of the first success (collect's convention); None if never
    length: int  # recorded frames

    @property
    def end(self) -> int:
        """Chunk starts lie before this frame: the first success (collect's episodes stop there), else the last
        recorded frame + 1."""
        return self.first_success_step if self.first_success_step is not None else self.length


def episode_path(out: Path, episode_index: int) -> Path:
    return out / "episodes" / f"{int(episode_index)}.safetensors"


def chunk_starts(end: int, n_action_steps: int) -> list[int]:
    """Frames at which the policy would have re-planned: every ``n_action_steps`` frames from 0, before ``end``."""
    return list(range(0, int(end), int(n_action_steps)))


def action_windows(actions: torch.Tensor, starts: list[int], chunk_len: int) -> torch.Tensor:
    """``(len(starts), chunk_len, d)`` windows of an episode's actions ``(T, d)``; past the last frame the last
    action repeats (LeRobot's padding of training chunks)."""
    idx = torch.as_tensor(starts, dtype=torch.long)[:, None] + torch.arange(chunk_len)[None, :]
    return actions[idx.clamp_max(actions.shape[0] - 1)]


# ---------------------------------------------------------------------------------------------------- labels
def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    if isinstance(value, (float, np.floating)) and float(value) in (0.0, 1.0):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ValueError(f"{where}: success label {value!r} is not a boolean (true/false, 1/0)")


def read_label_file(path: str | os.PathLike) -> dict[int, bool]:
    """``episode_index → success`` from a JSON object (``{"0": true, "1": false}``) or a CSV file with columns
    ``episode_index,success``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} does not exist")
    text = path.read_text()
    labels: dict[int, bool] = {}
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        header = rows[0].keys() if rows else (text.splitlines() or [""])[0].split(",")
        missing = [c for c in ("episode_index", "success") if c not in header]
        if missing:
            raise ValueError(f"labels file {path} needs CSV columns 'episode_index,success'; it lacks {missing}")
        items = [(r["episode_index"], r["success"], f"{path} line {i + 2}") for i, r in enumerate(rows)]
    elif path.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"labels file {path} is not valid JSON ({e})") from e
        if not isinstance(obj, dict):
            raise ValueError(f"labels file {path} must hold a JSON object {{\"<episode_index>\": true|false, ...}}")
        items = [(k, v, f"{path} entry {k!r}") for k, v in obj.items()]
    else:
        raise ValueError(f"labels file {path}: expected a .json or .csv file")
    for key, value, where in items:
        try:
            index = int(str(key).strip())
        except ValueError:
            raise ValueError(f"{where}: episode index {key!r} is not an integer") from None
        if index in labels:
            raise ValueError(f"{where}: episode {index} is labelled twice")
        labels[index] = _as_bool(value, where)
    return labels


def _column(ds: Any, key: str) -> np.ndarray:
    values = ds.hf_dataset.with_format(None).select_columns([key]).to_pandas()[key].to_numpy()
    return np.asarray([v[0] if isinstance(v, (list, np.ndarray)) else v for v in values], dtype=np.float64)


def episode_labels(ds: Any, cfg: ImportConfig, bounds: dict[int, tuple[int, int]],
                   root: Path) -> tuple[dict[int, EpisodeLabel], str]:
    """Each imported episode's label (see the module docstring for the sources) and a name of the source."""
    info_path = root / "meta" / "info.json"
    lengths = {e: hi - lo for e, (lo, hi) in bounds.items()}
    if cfg.labels is not None:
        given = read_label_file(cfg.labels)
        missing = sorted(set(bounds) - set(given))
        if missing:
            raise ValueError(f"labels file {cfg.labels} has no label for {len(missing)} episode(s) of {root}: "
                             f"{missing[:10]}{' ...' if len(missing) > 10 else ''}")
        unknown = sorted(set(given) - set(ds.meta.episodes["episode_index"]))
        if unknown:
            raise ValueError(f"labels file {cfg.labels} labels episode(s) {unknown[:10]} that {root} does not have "
                             f"(it has {ds.meta.total_episodes} episodes)")
        return ({e: EpisodeLabel(given[e], lengths[e] if given[e] else None, lengths[e]) for e in bounds},
                f"file:{cfg.labels}")
    key = cfg.success_key
    if key is None:
        key = next((k for k in (FRAME_SUCCESS_KEY, EPISODE_SUCCESS_KEY) if k in ds.meta.features), None)
        if key is None:
            raise ValueError(f"{root} has no success label: {info_path} has neither {FRAME_SUCCESS_KEY!r} nor "
                             f"{EPISODE_SUCCESS_KEY!r}; pass --labels <file.json|file.csv> (episode_index → "
                             "success) or --success-key <column>")
    elif key not in ds.meta.features:
        raise ValueError(f"success column {key!r} is not a feature of {info_path} (it has "
                         f"{', '.join(sorted(ds.meta.features))})")
    shape = tuple(ds.meta.features[key].get("shape") or (1,))
    if int(np.prod(shape)) != 1:
        raise ValueError(f"success column {key!r} of {info_path} must hold one value per frame, has shape {shape}")
    values = _column(ds, key) > 0.5  # bool, 0/1, or a 0/1 reward
    labels = {}
    for e, (lo, hi) in bounds.items():
        v = values[lo:hi]
        if key.startswith(EPISODE_PREFIX):
            if v.size and not (v == v[0]).all():
                raise ValueError(f"episode column {key!r} of {root} changes within episode {e}; a per-frame success "
                                 "column must not start with 'episode.'")
            ok = bool(v[0]) if v.size else False
            labels[e] = EpisodeLabel(ok, hi - lo if ok else None, hi - lo)
        else:
            first = int(np.argmax(v)) + 1 if v.any() else None
            labels[e] = EpisodeLabel(first is not None, first, hi - lo)
    return labels, f"column:{key}"


# ---------------------------------------------------------------------------------------------------- encoding
def observation_batch(ds: Any, indices: list[int]) -> dict[str, Any]:
    """Frames ``indices`` of ``ds`` as one policy batch: every ``observation.*`` tensor stacked (images CHW float in
    [0, 1], as LeRobotDataset returns them) and ``task`` as a list of strings."""
    items = [ds[i] for i in indices]
    batch: dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in items[0]
                             if k.startswith("observation.") and isinstance(items[0][k], torch.Tensor)}
    batch[TASK_KEY] = [str(it[TASK_KEY]) for it in items]
    return batch


def encode_episode(policy: Any, ds: Any, lo: int, starts: list[int], windows: torch.Tensor, batch_size: int,
                   where: str) -> dict[str, torch.Tensor]:
    """Features and normalised chunks of one episode's chunk starts (frame offsets from ``lo``)."""
    feats: dict[str, list[torch.Tensor]] = {}
    chunks = []
    for i in range(0, len(starts), batch_size):
        part = starts[i:i + batch_size]
        batch = observation_batch(ds, [lo + s for s in part])
        try:
            with torch.no_grad():
                context = policy.encode(batch)
                f = policy.critic_features(context)
        except (KeyError, ValueError) as e:
            # a KeyError's text is its repr; a bare key means the policy looked up a feature the dataset lacks
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            if isinstance(e, KeyError) and " " not in str(msg):
                msg = f"it needs {msg!r}"
            keys = ", ".join(sorted(batch))
            raise ValueError(f"the policy cannot compute its critic features from {where} (frame {lo + part[0]}): "
                             f"{msg}; the dataset gives it {keys}") from e
        with torch.no_grad():  # after encode: a relative-action policy takes this batch's state as the reference
            c = policy.normalize_actions(windows[i:i + batch_size].to(torch.float32))
        for k, v in f.items():
            feats.setdefault(k, []).append(v.detach().float().cpu())
        chunks.append(c.detach().float().cpu())
    out = {f"feature.{k}": torch.cat(v) for k, v in feats.items()}
    out["chunk"] = torch.cat(chunks)
    out["step"] = torch.as_tensor(starts, dtype=torch.long)
    return out


def read_episode_file(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {})["episode"]), {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"episode file {path} is unreadable ({e}); delete it and re-run to import it again") from e


def _is_current(path: Path, label: EpisodeLabel) -> bool:
    """An episode file exists and was cut at the end the current labels give (labels may change between runs)."""
    if not path.exists():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {})["episode"]).get("end") == label.end
    except Exception:
        return False  # unreadable (e.g. a truncated copy): import it again


# ---------------------------------------------------------------------------------------------------- the job
def _check_policy(policy: Any, info: dict, root: Path, spec: str) -> None:
    if not callable(getattr(policy, "normalize_actions", None)):
        raise ValueError(f"policy {spec} ({type(policy).__name__}) has no normalize_actions(actions), the inverse "
                         "of decode_actions that maps recorded actions into its chunk space")
    shape = tuple(info["features"][ACTION_KEY].get("shape") or ())
    if len(shape) != 1 or shape[0] != policy.spec.action_dim:
        raise ValueError(f"{root / 'meta' / 'info.json'}: 'action' has shape {shape}, but policy {spec} acts in "
                         f"{policy.spec.action_dim} dimensions")


def import_rollouts(cfg: ImportConfig, out: str | os.PathLike, *, batch_size: int = 32, progress: bool = True,
                    policy: Any = None) -> dict:
    """Import (or resume importing) ``cfg.dataset`` into the run folder ``out``; returns a summary dict.

    ``policy``: the already loaded policy named by ``cfg.policy`` (else it is loaded here).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    root = Path(cfg.dataset).expanduser()
    info = read_info(root)
    check_features(info, (ACTION_KEY,), root / "meta" / "info.json")
    if policy is None:
        from gaflow.policies.registry import load_policy

        policy = load_policy(cfg.policy)
    _check_policy(policy, info, root, cfg.policy)
    n_action_steps = GuidedRuntime(policy, n_action_steps=cfg.n_action_steps).n_action_steps  # the runtime's rule
    ds = load_dataset(root, required_features=(ACTION_KEY,))
    episodes = ds.meta.episodes
    all_bounds = {int(e): (int(lo), int(hi)) for e, lo, hi in zip(
        episodes["episode_index"], episodes["dataset_from_index"], episodes["dataset_to_index"], strict=True)}
    tasks = {int(e): (t[0] if isinstance(t, list) and len(t) == 1 else str(t))
             for e, t in zip(episodes["episode_index"], episodes["tasks"], strict=True)}
    wanted = sorted(all_bounds) if cfg.episodes is None else sorted({int(e) for e in cfg.episodes})
    unknown = [e for e in wanted if e not in all_bounds]
    if unknown:
        raise ValueError(f"episodes {unknown[:10]} are not in {root} (it has episodes 0-{max(all_bounds)})")
    bounds = {e: all_bounds[e] for e in wanted}
    labels, label_source = episode_labels(ds, cfg, bounds, root)  # before any encoding: missing labels fail fast

    out = job_folder(out, cfg.key(), "import.json", paths=PATH_FIELDS)
    for stale in out.glob("episodes/.*.tmp"):  # left by a killed run mid-write; never renamed into place
        stale.unlink()
    actions = torch.from_numpy(np.stack(
        ds.hf_dataset.with_format(None).select_columns([ACTION_KEY]).to_pandas()[ACTION_KEY].to_numpy()
    ).astype(np.float32))  # (frames, action_dim)
    seeds = _column(ds, "episode.seed") if "episode.seed" in ds.meta.features else None
    todo = [e for e in wanted if not _is_current(episode_path(out, e), labels[e])]
    t0 = time.perf_counter()

    def import_episode(e: int) -> list[tuple[int, dict, dict]]:
        lo, hi = bounds[e]
        starts = chunk_starts(labels[e].end, n_action_steps)
        windows = action_windows(actions[lo:hi], starts, policy.spec.chunk_len)
        tensors = encode_episode(policy, ds, lo, starts, windows, batch_size, f"{root} episode {e}")
        meta = {"episode_index": e, "end": labels[e].end, "length": hi - lo}
        return [(e, tensors, meta)]

    def write(results: list) -> str:
        for e, tensors, meta in results:
            atomic_save_safetensors(episode_path(out, e), tensors, {"episode": json.dumps(meta)})
        return f"episode {results[-1][0]}"

    run_jobs(InProcessExecutor(), import_episode, [(e,) for e in todo], label="import", total=len(wanted),
             completed=len(wanted) - len(todo), progress=progress, on_result=write)
    elapsed = time.perf_counter() - t0
    summaries = []
    for e in wanted:
        lab = labels[e]
        lo = bounds[e][0]
        summaries.append({"task": tasks[e], "seed": int(seeds[lo]) if seeds is not None else e, "episode_index": e,
                          "success": lab.success, "first_success_step": lab.first_success_step,
                          "length": lab.length, "description": tasks[e]})
    table = assemble(out, summaries, labels, n_action_steps)
    table.meta = {"policy": cfg.policy, "dataset": str(cfg.dataset), "labels": label_source,
                  "n_action_steps": n_action_steps, "source": "import-rollouts"}
    table.save(out / "chunks.safetensors")
    atomic_write_text(out / "episodes.jsonl", "".join(json.dumps(s) + "\n" for s in summaries))
    return {"episodes": len(wanted), "imported_now": len(todo), "chunks": len(table), "seconds": elapsed,
            "success_rate": float(np.mean([s["success"] for s in summaries])) if summaries else 0.0,
            "labels": label_source, "n_action_steps": n_action_steps}


def assemble(out: Path, summaries: list[dict], labels: dict[int, EpisodeLabel], n_action_steps: int) -> ChunkTable:
    """The chunk table of the episode files, in episode order, labelled by collect's rule
    (:meth:`ChunkTable.from_episode`)."""
    if not summaries:
        raise ValueError("no episodes to import")
    parts = []
    for s in summaries:
        e = s["episode_index"]
        _, t = read_episode_file(episode_path(out, e))
        lab = labels[e]
        parts.append(ChunkTable.from_episode(
            chunk=t["chunk"], features={k[len("feature."):]: v for k, v in t.items() if k.startswith("feature.")},
            step=t["step"], executed=(lab.end - t["step"]).clamp_max(n_action_steps),
            first_success_step=lab.first_success_step, episode=s))
    return ChunkTable.concat(parts)
