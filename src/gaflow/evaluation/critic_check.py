"""The critic report's check on *real sampler states*: the base policy's observations from the recorded episodes,
re-encoded and sampled through the runtime with the given guidance config, give the distribution of
‖applied guidance‖/‖velocity‖ — with a warning when guidance would be negligible (the published method's critics
were 8–400× too weak and nobody noticed) or would dominate. Critic-only quality numbers are
:func:`gaflow.critic.report.critic_report`'s; this stage adds the strength part, which needs a policy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gaflow.critic.data import ChunkTable
from gaflow.critic.report import DOMINANT_RATIO, NEGLIGIBLE_RATIO, critic_report
from gaflow.observations import ENV_STATE_KEY, IMAGE_KEY, STATE_KEY, TASK_KEY

# Under a relative strength the raw ratio ‖g‖/‖v‖ says how far the rescale amplifies the critic's pull. A median
# of 0.0057 (×35 at ρ = 0.2) guided push-wall to +16 points (BENCHMARKS §12), so small is not noise by itself;
# below 1e-3 (×200 and more) the check warns.
RAW_NEGLIGIBLE_RATIO = 1e-3


def observations_at(collect_dir: Path, table: ChunkTable, rows: torch.Tensor) -> list[dict]:
    """Rebuild the env observation each chunk was sampled from (recorded frames of the episode files)."""
    from gaflow.collect import episode_path, read_episode

    cache: dict[int, tuple[dict, dict]] = {}
    obs = []
    for r in rows.tolist():
        e = int(table.episode[r])
        if e not in cache:
            ep = table.episodes[e]
            cache[e] = read_episode(episode_path(collect_dir, ep["task"], ep["seed"]))
        meta, t = cache[e]
        i = int(table.step[r])
        if "frame.state" not in t or i >= t["frame.state"].shape[0]:
            continue
        o = {STATE_KEY: t["frame.state"][i].numpy(), ENV_STATE_KEY: t["frame.env_state"][i].numpy(),
             TASK_KEY: meta.get("task_description") or meta["task"]}
        if "frame.image" in t:
            o[IMAGE_KEY] = t["frame.image"][i].numpy()
        obs.append(o)
    return obs


def guidance_strength(runtime, observations: list[dict], batch: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Per (step, sample) diagnostics of ``runtime``'s guided sampler on real observations → flat arrays."""
    ratios, gates, raw, raw_ratios = [], [], [], []
    for i in range(0, len(observations), batch):
        part = observations[i:i + batch]
        runtime.start_episode([seed * 1_000_003 + i + j for j in range(len(part))])  # a noise stream per state
        d = runtime.infer(part, with_features=False).result.diagnostics
        ok = torch.isfinite(d.ratio)
        ratios.append(d.ratio[ok].numpy())
        gates.append(d.gate[ok].numpy())
        raw.append(d.raw_grad_norm[ok].numpy())
        raw_ratios.append(d.raw_ratio[ok].numpy())
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
    return {"ratio": cat(ratios), "gate": cat(gates), "raw_grad_norm": cat(raw), "raw_ratio": cat(raw_ratios)}


def strength_verdict(ratio: np.ndarray, raw_ratio: np.ndarray | None = None,
                     relative: bool = False) -> tuple[str, str | None]:
    """Judge guidance strength on real states. Under a relative strength the applied ratio ‖Δv‖/‖v‖ equals ρ by
    construction, so the check reads the *raw* ratio ‖g‖/‖v‖ before the rescale: a critic whose gradient is
    negligible against the velocity has a flat, noise-dominated direction that the rescale only amplifies."""
    if ratio.size == 0:
        return "unknown", "no sampler states could be rebuilt from the data"
    if relative and raw_ratio is not None and raw_ratio.size:
        med = float(np.median(raw_ratio))
        if med < RAW_NEGLIGIBLE_RATIO:
            return "negligible", (f"median raw ‖g‖/‖v‖ = {med:.2g} < {RAW_NEGLIGIBLE_RATIO}: the critic barely pulls "
                                  "against the velocity on real states, and the relative strength amplifies that "
                                  f"pull {float(np.median(ratio)) / max(med, 1e-12):.3g}× — check the critic (AUC, "
                                  "progress) before trusting its direction")
        return "ok", None
    med = float(np.median(ratio))
    if med < NEGLIGIBLE_RATIO:
        return "negligible", (f"median ‖Δv‖/‖v‖ = {med:.2g} < {NEGLIGIBLE_RATIO}: guidance this weak cannot change "
                              "the chunks — raise the scale or use a relative strength (--relative)")
    if med > DOMINANT_RATIO:
        return "dominant", (f"median ‖Δv‖/‖v‖ = {med:.2g} > {DOMINANT_RATIO}: guidance overrides the policy — "
                            "expect off-manifold chunks; lower the scale or clip")
    return "ok", None


def measure_strength(policy_spec: str, critic, collect_dir: Path, table: ChunkTable, guidance_cfg,
                     rows: torch.Tensor, max_states: int = 128) -> dict:
    """Strength of ``guidance_cfg`` with ``critic`` (loaded) on up to ``max_states`` recorded states (``rows`` of the
    collect folder's chunk ``table``) → arrays plus the verdict."""
    from gaflow.runtime import GuidedRuntime, RuntimeSpec

    runtime = GuidedRuntime.from_spec(RuntimeSpec(policy=policy_spec, guidance=guidance_cfg.to_dict()),
                                      critic=critic)
    pick = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:max_states]]
    with torch.no_grad():
        strength = guidance_strength(runtime, observations_at(collect_dir, table, pick))
    strength["verdict"], strength["warning"] = strength_verdict(strength["ratio"], strength["raw_ratio"],
                                                                relative=guidance_cfg.relative is not None)
    return strength


def critic_report_with_strength(critic_dir: Path, collect_dir: Path, out: Path, policy_spec: str | None = None,
                                guidance_cfg=None, max_states: int = 128, same_data: bool = True) -> dict:
    """``gaflow critic-report``: the critic's quality, plus guidance strength on real states when a policy and a
    guidance config are given."""
    measure = None
    if policy_spec is not None and guidance_cfg is not None:
        if (collect_dir / "import.json").exists() and not (collect_dir / "collect.json").exists():
            raise ValueError(f"{collect_dir} was written by `gaflow import-rollouts`: the guidance-strength check "
                             "(--policy) rebuilds observations from `gaflow collect`'s episode files; run "
                             "critic-report on it without --policy")

        def measure(critic, table, rows):  # the critic and table critic_report already loaded
            return measure_strength(policy_spec, critic, collect_dir, table, guidance_cfg, rows, max_states)
    return critic_report(critic_dir, collect_dir, out, measure, guidance_cfg, same_data=same_data)
