"""One flat, typed guidance config (a CLI flag and a config field are the same thing) and the :class:`Guidance`
object that composes the small pieces for the sampler: objective terms → estimator → finite check → strength →
schedule → gate → control → convention sign.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch

from gaflow.convention import ascent_sign
from gaflow.critic.models import feature_distance
from gaflow.guidance.checks import integer, number, optional_number
from gaflow.guidance.controls import Control
from gaflow.guidance.diagnostics import GuidanceDiagnostics, StagedStep
from gaflow.guidance.estimators import ESTIMATORS, FlowStep, estimate, real_dims
from gaflow.guidance.objective import Objective, WeightedTerm
from gaflow.guidance.strength import Schedule, Strength, per_sample_norm
from gaflow.guidance.terms import CRITIC, DEFAULT_OBJECTIVES, TERMS, TermInputs, check_objectives
from gaflow.guidance.uncertainty import Gate


@dataclass
class GuidanceConfig:
    estimator: str = "clean_estimate"  # noisy_point | clean_estimate | clean_jacobian | bptt | none
    scale: float = 1.0  # multiplies the gradient (GAF's β = 1/scale)
    relative: float | None = None  # ρ: ‖Δv‖ = ρ·‖v‖ per sample and step; overrides scale
    clip: float | None = None  # per-sample max ‖g‖ before scaling
    schedule: str = "all"  # all | window | ramp
    schedule_start: float = 0.0
    schedule_end: float = 1.0
    trust_region: float | None = None  # max L2 distance (real dims) from the unguided chunk with the same noise
    aggregate: str = "mean"  # mean | min | lcb
    kappa: float = 1.0  # lcb = mean − κ·std
    gate_k: float = 0.0  # gate = clamp(exp(−k·std), gate_min, 1); 0 = off
    gate_min: float = 0.1
    fallback_std: float | None = None  # std above this → unguided velocity for that sample
    # trust gate: scale guidance down where the observation's features lie outside the critic's training data;
    # gate = clamp(exp(−max(0, d/q95 − 1)/trust_scale), trust_min, 1), d the RMS z-score of the features and q95
    # its 95th percentile on the critic's validation episodes (critic.json "trust"); None = off
    trust_scale: float | None = None
    trust_min: float = 0.0
    control: str = "none"  # none | zero | random
    control_seed: int = 0
    posthoc_steps: int = 0  # post-hoc gradient ascent on the final chunk
    posthoc_lr: float = 0.01
    # Terms climbed as Σ weight·term, e.g. [{"name": "critic", "weight": 1.0}, {"name": "smooth", "weight": 0.1}];
    # None = the critic alone (gaflow.guidance.terms). Extra keys of an entry are the term's parameters.
    objectives: list[dict] | None = None

    def __post_init__(self) -> None:
        if self.estimator not in (*ESTIMATORS, "none"):
            raise ValueError(f"estimator must be one of {', '.join((*ESTIMATORS, 'none'))}; got {self.estimator!r}")
        integer("posthoc_steps", self.posthoc_steps, low=0)
        number("posthoc_lr", self.posthoc_lr, low=0)
        optional_number("trust_region", self.trust_region, low=0)
        number("kappa", self.kappa, low=0)
        optional_number("trust_scale", self.trust_scale, low=0, low_open=True)
        number("trust_min", self.trust_min, low=0, high=1)
        integer("control_seed", self.control_seed, low=0, high=2**63 - 1)
        # Build the pieces once so a bad value fails here, naming its field.
        self.strength, self.schedule_, self.gate = (
            Strength(self.scale, self.relative, self.clip),
            Schedule(self.schedule, self.schedule_start, self.schedule_end),
            Gate(self.gate_k, self.gate_min, self.fallback_std),
        )
        Control(self.control)
        if self.aggregate not in ("mean", "min", "lcb"):
            raise ValueError(f"aggregate must be mean, min or lcb; got {self.aggregate!r}")
        if self.objectives is not None:  # normalised (weight filled in) so equal objectives hash equally
            self.objectives = check_objectives(self.objectives)
        self.objectives_ = check_objectives(DEFAULT_OBJECTIVES) if self.objectives is None else self.objectives
        if not self.gate.inactive and not self.has_critic_term:
            raise ValueError("gate_k / fallback_std gate on the critic ensemble's std, but objectives has no "
                             f"{CRITIC!r} term")

    @property
    def has_critic_term(self) -> bool:
        """Whether the objective has the critic term (the gate, the fallback and best-of-N read it)."""
        return any(e["name"] == CRITIC for e in self.objectives_)

    @property
    def needs_critic(self) -> bool:
        return any(TERMS[e["name"]].needs_critic for e in self.objectives_)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuidanceConfig:
        if not isinstance(data, dict):
            raise ValueError(f"a guidance config must be a dict of fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown guidance config field(s): {', '.join(unknown)}")
        return cls(**data)

    def config_hash(self) -> str:
        d = self.to_dict()
        if self.objectives_ == DEFAULT_OBJECTIVES:  # the field is younger than some locks: same hash as before it
            del d["objectives"]
        for name, default in (("trust_scale", None), ("trust_min", 0.0)):  # likewise
            if d[name] == default:
                del d[name]
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class Guidance:
    """A critic plus a :class:`GuidanceConfig`, applied by the sampler at every flow step."""

    def __init__(self, critic, config: GuidanceConfig | None = None) -> None:
        self.critic = critic
        self.config = config or GuidanceConfig()
        if critic is None and self.config.needs_critic:
            names = [e["name"] for e in self.config.objectives_ if TERMS[e["name"]].needs_critic]
            raise ValueError(f"GuidanceConfig.objectives term(s) {', '.join(map(repr, names))} need a critic, but "
                             "Guidance got critic=None")
        self.control = Control(self.config.control, self.config.control_seed)

    def start_episode(self, episode_seed: int) -> None:
        """Call at the start of every episode: reseeds the ``random`` control from (control_seed, episode_seed)."""
        self.control.start_episode(episode_seed)

    def objective(self, features: dict[str, torch.Tensor], context: dict[str, Any] | None = None) -> Objective:
        """The weighted sum of the configured terms for one batch: ``features`` (B, F) each; ``context`` holds
        per-request inputs of the terms (e.g. previously executed actions), one row per sample like features."""
        inputs = TermInputs(self.critic, features, context, self.config)
        terms = []
        for entry in self.config.objectives_:
            params = {k: v for k, v in entry.items() if k not in ("name", "weight")}
            terms.append(WeightedTerm(entry["name"], entry["weight"], TERMS[entry["name"]].factory(inputs, **params)))
        objective = Objective(terms)
        if self.config.trust_scale is not None:
            objective.trust = self.trust(features)
        return objective

    def trust(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The trust gate ``(B,)`` of these observations (see ``GuidanceConfig.trust_scale``): 1 inside the critic's
        support (feature distance ≤ its validation q95), decaying outside it."""
        cal = getattr(self.critic, "trust_calibration", None)
        if cal is None:
            raise ValueError("trust_scale needs a critic with a trust calibration (critic.json 'trust'; critics "
                             "trained before the trust gate have none — retrain it)")
        with torch.no_grad():
            d = feature_distance(self.critic, features)
        excess = (d / cal["q95"] - 1.0).clamp_min(0.0)
        return torch.exp(-excess / self.config.trust_scale).clamp(self.config.trust_min, 1.0)

    @property
    def active(self) -> bool:
        return self.config.estimator != "none"

    def weight(self, k: int, n: int) -> float:
        return self.config.schedule_.weight(k, n)

    def guided_velocity(
        self, step: FlowStep, objective: Objective, weight: float, diag: GuidanceDiagnostics | None
    ) -> torch.Tensor:
        """The policy velocity at ``step`` with guidance added to its real dims.

        Kept lean on purpose (issue #18): beyond the objective's forward+backward it is a few (B,)-sized tensor
        ops, none of them on the padded dims, and no host sync; the diagnostics only keep references to tensors
        made here (:meth:`GuidanceDiagnostics.stage`) and are summarised when read. The gate reads the critic
        term's ensemble std only: no other term can open or close it.
        """
        cfg, d = self.config, step.action_dim
        v, g_raw, val = estimate(cfg.estimator, step, objective)  # type: ignore[arg-type]
        ok = _finite(val.total + g_raw.sum(tuple(range(1, g_raw.dim()))))  # (B,): NaN/inf anywhere in J or g
        g = torch.where(ok.view(-1, 1, 1), g_raw, 0.0)  # a non-finite sample gets no guidance (g = 0 ⇒ Δ = 0)
        v_real = real_dims(v, d)
        strength = cfg.strength
        g_norm = per_sample_norm(g) if strength.needs_g_norm else None
        v_norm = per_sample_norm(v_real) if strength.relative is not None else None
        delta = strength(g, v_real, g_norm, v_norm)
        std = None
        if cfg.gate.inactive:
            gate, fell_back = None, None
            if weight != 1.0:
                delta = delta * weight
        else:
            std = val.critic.std
            gate, fell_back = cfg.gate.apply(torch.nan_to_num(std, nan=float("inf")))
            delta = delta * (gate if weight == 1.0 else gate * weight).view(-1, 1, 1)  # gate·1 is gate, bit for bit
        if objective.trust is not None:  # outside the critic's support: scaled down (per chunk, not per step)
            delta = delta * objective.trust.view(-1, 1, 1)
            gate = objective.trust if gate is None else gate * objective.trust
        applied = self.control(delta)
        if applied is None:
            v_out = v
        else:
            # v_real + (−1)·Δ is v_real − Δ bit for bit; the padded dims are copied once, untouched
            moved = v_real - applied if ascent_sign(step.convention) < 0 else v_real + applied
            v_out = moved if d == v.shape[-1] else torch.cat([moved, v[..., d:]], dim=-1)
        if diag is not None:
            q = val.critic
            diag.stage(StagedStep(
                step=step.step, g=g, ok=ok, v_norm=v_norm, v_real=None if v_norm is not None else v_real.clone(),
                g_norm=g_norm, applied=applied, gate=gate,
                members=None if q is None else q.members, std=std, fell_back=fell_back,
                term_values=val.terms, term_grads=val.term_grads,
            ))
        return v_out


def _finite(x: torch.Tensor) -> torch.Tensor:
    """``torch.isfinite(x)`` for floating ``x`` in two tensor ops instead of four: ``x − x`` is 0 exactly when
    ``x`` is finite (inf − inf and NaN − NaN are NaN, and NaN ≠ 0)."""
    return (x - x) == 0
