"""Critic training: episode-level split, AdamW, early stopping on validation, best checkpoint, atomic saves.

Ensemble members get independent initialisation *and* independent data order (each member draws its own
minibatch every step). Multi-task: one critic over several tasks, conditioned on task features; tasks listed in
``held_out_tasks`` are excluded from training and validation entirely (for evaluation on unseen tasks).

Episodes are split three ways: ``train`` (gradient steps), ``validation`` (early stopping and the best checkpoint)
and ``report`` (touched by no training decision; ``gaflow critic-report`` measures AUC and calibration on them).

A checkpoint is ``critic.safetensors`` plus ``critic.json``, written last and carrying the weights' sha256, so a
critic edited, truncated or overwritten after saving is refused at load, naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load_file

from gaflow.critic.data import ChunkTable, episode_rows
from gaflow.critic.models import EnsembleMLPCritic, TransformerCritic
from gaflow.critic.targets import TARGETS, binary_success, expectile_loss, success_to_go
from gaflow.io import atomic_save_safetensors, atomic_write_json, sha256_file
from gaflow.normalize import compute_stats


@dataclass
class CriticTrainConfig:
    target: str = "success_to_go"  # success_to_go (MSE) | binary (BCE) | iql (expectile V, TD Q)
    gamma: float = 0.99  # per env step
    features: tuple[str, ...] = ("observation", "task", "state")  # which policy features the critic sees
    arch: str = "mlp"  # mlp | transformer
    hidden: tuple[int, ...] = (256, 256)
    members: int = 3
    epochs: int = 40
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 1e-4
    val_fraction: float = 0.2  # episodes for early stopping
    report_fraction: float = 0.2  # episodes no training decision sees: critic-report's AUC and calibration
    patience: int = 6  # epochs without validation improvement before stopping
    expectile: float = 0.7  # IQL
    held_out_tasks: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.arch not in ("mlp", "transformer"):
            raise ValueError(f"arch must be 'mlp' or 'transformer', got {self.arch!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 <= self.report_fraction < 1.0 or self.val_fraction + self.report_fraction >= 1.0:
            raise ValueError(f"report_fraction must be in [0, 1) and leave training episodes beside val_fraction "
                             f"{self.val_fraction}; got {self.report_fraction}")
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {self.members}")
        self.features, self.hidden = tuple(self.features), tuple(self.hidden)
        self.held_out_tasks = tuple(self.held_out_tasks)


@dataclass
class EpisodeSplit:
    train: list[int]
    validation: list[int]
    held_out: list[int] = field(default_factory=list)  # episodes of held-out tasks
    report: list[int] = field(default_factory=list)  # seen by no training decision (critic-report's quality numbers)


def episode_split(table: ChunkTable, val_fraction: float, seed: int, held_out_tasks=(),
                  report_fraction: float = 0.0) -> EpisodeSplit:
    """Split by **episode** (chunk-level splits leak); stratified by task and outcome so both sides see both.

    ``report_fraction`` of each (task, outcome) group goes to ``report`` (after ``validation`` is drawn, so a split
    with ``report_fraction=0`` is the two-way split of earlier versions, episode for episode). Data too small for
    three sides gets an empty ``report`` and a warning; critic-report then falls back, labelled, to validation.
    """
    tasks = table.episode_task
    unknown = sorted(set(held_out_tasks) - set(tasks))
    if unknown:
        raise ValueError(f"held-out task(s) {unknown} do not occur in the data (tasks: {sorted(set(tasks))})")
    present = sorted(episode_rows(table))
    rng = np.random.default_rng(seed)
    train, val, report, held = [], [], [], []
    groups: dict[tuple, list[int]] = {}
    for e in present:
        if tasks[e] in held_out_tasks:
            held.append(e)
            continue
        groups.setdefault((tasks[e], bool(table.episodes[e]["success"])), []).append(e)
    for key in sorted(groups):
        eps = list(groups[key])
        rng.shuffle(eps)
        n_val = int(round(len(eps) * val_fraction)) if len(eps) > 1 else 0
        n_report = int(round(len(eps) * report_fraction)) if len(eps) > 2 else 0
        val += eps[:n_val]
        report += eps[n_val:n_val + n_report]
        train += eps[n_val + n_report:]
    if not val and len(train) >= 2:  # tiny data: every (task, outcome) group had one episode
        val.append(train.pop(int(rng.integers(len(train)))))
    if report_fraction > 0 and not report and len(train) >= 2:
        report.append(train.pop(int(rng.integers(len(train)))))
    if not train or not val:
        raise ValueError(f"need episodes on both sides of the split; got {len(train)} train, {len(val)} validation "
                         f"from {len(present)} episodes")
    if report_fraction > 0 and not report:
        warnings.warn(f"{len(present)} episodes are too few for a report split: critic-report will measure quality "
                      "on the validation episodes that chose the checkpoint (optimistic)", UserWarning, stacklevel=2)
    return EpisodeSplit(sorted(train), sorted(val), sorted(held), sorted(report))


def rows_of(table: ChunkTable, episodes: list[int]) -> torch.Tensor:
    return torch.nonzero(torch.isin(table.episode, torch.tensor(episodes, dtype=torch.long))).flatten()


def check_table(table: ChunkTable, cfg: CriticTrainConfig, action_dim: int | None = None) -> None:
    if len(table) == 0:
        raise ValueError("the chunk table is empty: collect rollouts first (`gaflow collect`)")
    missing = [k for k in cfg.features if k not in table.features]
    if missing:
        raise ValueError(f"chunk table has no feature column(s) {missing}; it has {sorted(table.features)}")
    if action_dim is not None and table.chunk.shape[-1] != action_dim:
        raise ValueError(f"chunk table chunks have action dim {table.chunk.shape[-1]}, expected {action_dim}")
    bad = table.nonfinite_fields()
    if bad:
        raise ValueError(f"chunk table has NaN/inf values in {bad}: a critic cannot train on them")
    s = table.success.bool()
    if bool(s.all()) or not bool(s.any()):
        # Documented behaviour: a critic can still be trained (success-to-go varies with time-to-success), but it
        # cannot rank success against failure; warn loudly rather than fail.
        kind = "succeeded" if bool(s.all()) else "failed"
        warnings.warn(f"every episode in the chunk table {kind}: the critic can still fit success-to-go, but it "
                      "cannot learn to tell success from failure (AUC is undefined)", UserWarning, stacklevel=3)


def build_critic(cfg: CriticTrainConfig, feature_dims: dict[str, int], chunk_len: int, action_dim: int,
                 feature_stats=None, use_chunk: bool = True):
    if cfg.arch == "mlp" or not use_chunk:
        return EnsembleMLPCritic(feature_dims, chunk_len, action_dim, cfg.hidden, cfg.members,
                                 feature_stats=feature_stats, use_chunk=use_chunk)
    return TransformerCritic(feature_dims, chunk_len, action_dim, d_model=cfg.hidden[0] // 4 or 64,
                             num_members=cfg.members, feature_stats=feature_stats)


def _member_values(critic, feats: dict[str, torch.Tensor], chunk: torch.Tensor | None, idx: torch.Tensor,
                   inputs: torch.Tensor | None = None):
    """Values ``(K, B)`` where member ``k`` sees rows ``idx[k]`` (independent data order per member).

    ``inputs``: the MLP's input matrix ``(N, in)`` for all rows, precomputed once (it has no parameters).
    """
    if isinstance(critic, EnsembleMLPCritic):
        if inputs is None:
            flat = idx.reshape(-1)
            x = critic.inputs({k: v[flat] for k, v in feats.items()}, None if chunk is None else chunk[flat])
            return critic.forward_inputs(x.view(*idx.shape, -1))
        return critic.forward_inputs(inputs[idx])
    f = critic._features(feats, chunk.dtype)
    return torch.stack([critic.member_forward(m, {k: v[idx[i]] for k, v in f.items()}, chunk[idx[i]])
                        for i, m in enumerate(critic.members)])


def iql_targets(value_net, feats: dict[str, torch.Tensor], rows: torch.Tensor, reward: torch.Tensor,
                next_row: torch.Tensor, discount: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
    """Chunked-IQL TD targets ``(K, B)``: member ``k``'s ``r + γ^exec·(1 − done)·V_k(s')`` on its own rows
    ``rows[k]``, with ``V_k`` its own value network member.

    Members see different rows (independent data order), so a value averaged over members would mix the values of
    different states into one target; each member bootstraps only from itself.
    """
    nxt = next_row[rows]  # (K, B)
    with torch.no_grad():
        v_next = _member_values(value_net, feats, None, nxt.clamp_min(0), inputs)  # (K, B)
    return reward[rows] + discount[rows] * (nxt >= 0) * v_next


def train_critic(table: ChunkTable, cfg: CriticTrainConfig | None = None, out_dir: str | os.PathLike | None = None,
                 progress: bool = True):
    """Train an ensemble critic on ``table``; returns ``(critic, metrics)``. Saves to ``out_dir`` if given."""
    cfg = cfg or CriticTrainConfig()
    check_table(table, cfg)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    split = episode_split(table, cfg.val_fraction, cfg.seed, cfg.held_out_tasks, cfg.report_fraction)
    tr, va = rows_of(table, split.train), rows_of(table, split.validation)
    feats = {k: table.features[k].float() for k in cfg.features}
    chunk = table.chunk.float()
    _, h, d = chunk.shape
    stats = {k: {s: v for s, v in st.items() if s in ("mean", "std")}
             for k, st in compute_stats({k: v[tr] for k, v in feats.items()}).items()}
    dims = {k: v.shape[1] for k, v in feats.items()}
    critic = build_critic(cfg, dims, h, d, stats)
    value_net = build_critic(cfg, dims, h, d, stats, use_chunk=False) if cfg.target == "iql" else None
    params = list(critic.parameters()) + (list(value_net.parameters()) if value_net is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    if cfg.target == "success_to_go":
        y = success_to_go(table, cfg.gamma)
    elif cfg.target == "binary":
        y = binary_success(table)
    else:
        y = table.reward.float()
    nxt, horizon_discount = table.next_row, cfg.gamma ** table.executed.float()

    # MLP inputs (normalised features ‖ flattened chunk) have no parameters: build them once, index per step
    with torch.no_grad():
        q_inputs = critic.inputs(feats, chunk) if isinstance(critic, EnsembleMLPCritic) else None
        v_inputs = value_net.inputs(feats, None) if value_net is not None else None

    def loss_on(rows_k: torch.Tensor) -> torch.Tensor:
        q = _member_values(critic, feats, chunk, rows_k, q_inputs)  # (K, B)
        if cfg.target == "success_to_go":
            return ((q - y[rows_k]) ** 2).mean()
        if cfg.target == "binary":
            return torch.nn.functional.binary_cross_entropy_with_logits(q, y[rows_k])
        # chunked IQL, each member on its own rows:
        # V_k(s) ← expectile of Q_k(s, A);  Q_k(s, A) ← r + γ^exec·(1 − done)·V_k(s')
        v = _member_values(value_net, feats, None, rows_k, v_inputs)  # (K, B)
        v_loss = expectile_loss(q.detach() - v, cfg.expectile).mean()
        target = iql_targets(value_net, feats, rows_k, y, nxt, horizon_discount, v_inputs)
        return ((q - target) ** 2).mean() + v_loss

    def evaluate(rows: torch.Tensor) -> float:
        with torch.no_grad():
            return float(loss_on(rows.expand(cfg.members, -1)))

    best, best_state, bad, history = float("inf"), None, 0, []
    steps_per_epoch = max(1, len(tr) // cfg.batch_size)
    prog = Progress(TextColumn("critic"), BarColumn(), TextColumn("{task.completed}/{task.total} epochs"),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    disable=not progress)
    with prog:
        bar = prog.add_task("train", total=cfg.epochs, info="")
        for epoch in range(cfg.epochs):
            critic.train()
            perms = torch.stack([tr[torch.randperm(len(tr), generator=gen)] for _ in range(cfg.members)])
            for s in range(steps_per_epoch):
                rows_k = perms[:, s * cfg.batch_size:(s + 1) * cfg.batch_size]
                loss = loss_on(rows_k)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            val_loss = evaluate(va)
            history.append({"epoch": epoch, "train_loss": float(loss.detach()), "val_loss": val_loss})
            if val_loss < best - 1e-6:
                best, bad = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in critic.state_dict().items()}
                best_epoch = epoch
            else:
                bad += 1
            prog.update(bar, advance=1, info=f"val {val_loss:.4f} (best {best:.4f})")
            if bad >= cfg.patience:
                break
    if best_state is None:
        raise ValueError(f"the critic's validation loss was never finite ({history[-1]['val_loss']} at the last "
                         "epoch): lower lr, or check the chunk table")
    critic.load_state_dict(best_state)
    critic.eval()
    critic.trust_calibration = trust_calibration(critic, feats, va)
    metrics = {"best_val_loss": best, "best_epoch": best_epoch, "epochs_run": len(history), "history": history,
               "train_episodes": len(split.train), "validation_episodes": len(split.validation),
               "held_out_episodes": len(split.held_out), "report_episodes": len(split.report),
               "train_chunks": len(tr), "validation_chunks": len(va)}
    if out_dir is not None:
        save_critic(critic, out_dir, cfg, {"metrics": metrics, "split": dataclasses.asdict(split),
                                          "trust": critic.trust_calibration})
    return critic, metrics, split


def trust_calibration(critic, feats: dict[str, torch.Tensor], rows: torch.Tensor) -> dict | None:
    """Quantiles of :func:`~gaflow.critic.models.feature_distance` on the validation rows (episodes the critic
    did not fit): the guidance trust gate treats distances up to ``q95`` as the critic's support."""
    from gaflow.critic.models import feature_distance

    if getattr(critic, "normalizer", None) is None or len(rows) == 0:
        return None
    with torch.no_grad():
        d = feature_distance(critic, {k: v[rows] for k, v in feats.items() if k in critic.feature_keys})
    q = torch.quantile(d, torch.tensor([0.5, 0.95, 0.99]))
    return {"distance": "rms_z", "split": "validation", "rows": len(rows), "q50": float(q[0]), "q95": float(q[1]),
            "q99": float(q[2])}


CRITIC_FORMAT = "gaflow-critic-v2"  # v2: critic.json carries the weights' sha256
WEIGHTS_FILE, CONFIG_FILE = "critic.safetensors", "critic.json"




def save_critic(critic, out_dir: str | os.PathLike, cfg: CriticTrainConfig, extra: dict | None = None) -> None:
    """``critic.safetensors`` (weights + feature stats), then ``critic.json`` (config, shapes, metrics, and the
    weights' sha256), each atomically; the config is written last, so a folder whose weights changed is detected."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"param.{k}": v.detach().contiguous() for k, v in critic.state_dict().items()}
    if critic.normalizer is not None:
        for key, st in critic.normalizer.stats.items():
            for s, v in st.items():
                tensors[f"stats.{key}.{s}"] = v.contiguous()
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise ValueError(f"refusing to save a critic with NaN/inf in {bad}")
    atomic_save_safetensors(out / WEIGHTS_FILE, tensors)
    info = {"config": dataclasses.asdict(cfg), "feature_dims": critic.feature_dims, "chunk_len": critic.chunk_len,
            "action_dim": critic.action_dim, "format": CRITIC_FORMAT, **(extra or {}),
            "files": {WEIGHTS_FILE: sha256_file(out / WEIGHTS_FILE)}}
    atomic_write_json(out / CONFIG_FILE, info)


def load_critic(path: str | os.PathLike):
    """Load a critic saved by :func:`save_critic` (``path`` is its folder).

    Refused, naming the file: weights whose sha256 differs from the one in ``critic.json``, and NaN/inf weights or
    feature stats (even with a matching checksum). A ``gaflow-critic-v1`` folder (saved before checksums) loads
    with a warning: refusing would strand every critic trained so far, while its weights still get the NaN/inf
    check and a shape check against its config.
    """
    path = Path(path)
    cfg_file, w_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    for f in (cfg_file, w_file):
        if not f.exists():
            raise FileNotFoundError(f"critic checkpoint is missing {f}")
    try:
        info = json.loads(cfg_file.read_text())
        cfg = CriticTrainConfig(**info["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"critic config {cfg_file} is not a valid gaflow critic config: {e}") from e
    fmt = info.get("format")
    if fmt == CRITIC_FORMAT:
        digest = info.get("files", {}).get(WEIGHTS_FILE)
        if digest is None:
            raise ValueError(f"critic config {cfg_file} ({fmt}) lists no sha256 for {WEIGHTS_FILE}")
        if sha256_file(w_file) != digest:
            raise ValueError(f"critic weights {w_file} were changed after saving or not written with {cfg_file} "
                             "(sha256 mismatch)")
    elif fmt == "gaflow-critic-v1":
        warnings.warn(f"critic {path} was saved before checkpoints carried checksums: {w_file} cannot be verified "
                      "(re-save or retrain it to add one)", UserWarning, stacklevel=2)
    else:
        raise ValueError(f"critic config {cfg_file}: format {fmt!r} is not {CRITIC_FORMAT!r} (or gaflow-critic-v1)")
    try:
        tensors = load_file(str(w_file))
    except Exception as e:
        raise ValueError(f"critic weights {w_file} are unreadable: {e}") from e
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise ValueError(f"critic weights {w_file} hold NaN/inf values in {bad}")
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("stats."):
            key, stat = k[len("stats."):].rsplit(".", 1)
            stats.setdefault(key, {})[stat] = v
    critic = build_critic(cfg, info["feature_dims"], info["chunk_len"], info["action_dim"], stats or None)
    state = {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")}
    try:
        critic.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"critic weights {w_file} do not match its config {cfg_file}: {e}") from e
    critic.eval()
    critic.trust_calibration = info.get("trust")  # None for critics trained before the trust gate
    return critic
