"""The guided-inference runtime: the one object that turns an observation into guided actions.

>>> from gaflow.runtime import GuidedRuntime, RuntimeSpec
>>> rt = GuidedRuntime.from_spec(RuntimeSpec(policy="toy:default"))
>>> rt.start_episode(seed=3)
>>> obs = {"observation.state": [0.0, 0.0, 1.0, 1.0], "task": "move the point to the goal"}
>>> rt.infer(obs).actions.shape    # (B, H, action_dim) in env units
(1, 6, 2)

Built from a policy, an optional critic, a guidance config (locked or ad hoc) and a sampler config, it owns
encoding (once per chunk), guided sampling (the one sampler, :func:`gaflow.sampler.sample_chunks`), decoding to
env units, and the per-episode noise stream. Collection, evaluation, sweeps, ``eval-policy``, the critic report,
hook mode and a policy server all run through it; nothing else assembles (policy, critic, guidance, sampler) for
execution.

**Noise.** :meth:`GuidedRuntime.start_episode` seeds one generator per batch row from
:func:`episode_noise_seed` ``(seed, noise_seed)``; every chunk draws ``N·H·padded_dim`` values from it, so two arms
of an evaluation (unguided vs guided) start chunk ``k`` of episode ``seed`` from identical noise, and a row of a
batch gets exactly the chunks it would get alone. Guidance controls draw from their own generators and never touch
this stream. Without :meth:`start_episode`, rows draw from one stream seeded by ``noise_seed``.

**Objectives and constraints.** When the guidance climbs terms other than the critic, ``infer`` passes them an
objective context (:mod:`gaflow.guidance.context`): what the caller gives (``run_episode``: executed actions,
end-effector position, the env's action path) plus the policy's decode as a per-dimension affine map, measured
once per runtime. ``keep_out`` / ``bounds`` terms with ``"project": true`` are hard constraints: the selected
chunk is projected onto their feasible set after sampling and before decoding
(:class:`gaflow.guidance.Constraints`), and the violation counts before and after join each row's diagnostics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gaflow.guidance.config import Guidance, GuidanceConfig
from gaflow.guidance.constraints import Constraints
from gaflow.guidance.context import ACTION_OFFSET, ACTION_SCALE, affine_decode
from gaflow.guidance.terms import CRITIC
from gaflow.observations import stack_observations
from gaflow.sampler import SamplerConfig, SampleResult, sample_chunks


def episode_noise_seed(seed: int, noise_generator_seed: int) -> int:
    """Stable 63-bit seed of episode ``seed``'s policy-noise generator (SHA-256, not Python's salted hash)."""
    digest = hashlib.sha256(f"gaflow/policy-noise/{int(noise_generator_seed)}/{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class RuntimeSpec:
    """Everything that defines a runtime, as plain values (a worker process or a server rebuilds it from this)."""

    policy: str  # e.g. "compact:builtin", "lerobot:<dir>", "toy:default"
    critic: str | None = None  # critic folder (gaflow train-critic); needed when guidance uses the critic
    guidance: dict | None = None  # a GuidanceConfig dict; None = the unguided base policy
    num_steps: int | None = None  # flow steps (None: the policy's)
    num_candidates: int = 1
    select: str = "first"  # first | best (best-of-N by the critic)
    noise_seed: int = 0  # seed of the per-episode policy-noise streams
    n_action_steps: int | None = None  # actions executed per chunk (None: the policy's)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Inference:
    """What :meth:`GuidedRuntime.infer` returns for a batch of ``B`` observations."""

    actions: np.ndarray  # (B, H, action_dim) in env units
    chunk: torch.Tensor  # (B, H, padded_dim) the selected chunk in the policy's (normalised) space
    features: dict[str, torch.Tensor]  # critic features of the observations, each (B, F)
    values: torch.Tensor | None  # (B,) critic value of the selected chunk, when the sampler computed one
    diagnostics: list[dict] | None  # per row: GuidanceDiagnostics.summary() when guided
    latency_s: float  # encode + sample + decode for the whole batch
    result: SampleResult | None = None  # the sampler's full result (explicit mode): candidates, per-step diagnostics


def needs_critic(config: GuidanceConfig | dict | None, select: str = "first") -> bool:
    """Whether a guidance config (or best-of-N selection) reads a critic — stages check it before any work."""
    if isinstance(config, Mapping):
        config = GuidanceConfig.from_dict(config)
    if select == "best":
        return True
    if config is None:
        return False
    return config.needs_critic  # only objective terms that read a critic need one


class GuidedRuntime:
    """A frozen policy, optionally steered: ``infer(observation) → actions in env units + diagnostics``."""

    def __init__(self, policy, *, critic=None, guidance: GuidanceConfig | dict | None = None,
                 sampler: SamplerConfig | None = None, noise_seed: int = 0, n_action_steps: int | None = None,
                 spec: RuntimeSpec | None = None, mode: str = "explicit") -> None:
        if mode not in ("explicit", "hook"):
            raise ValueError(f"runtime mode must be 'explicit' or 'hook', got {mode!r}")
        self.policy, self.critic, self.mode = policy, critic, mode
        self.sampler = sampler or SamplerConfig()
        cfg = GuidanceConfig.from_dict(guidance) if isinstance(guidance, Mapping) else guidance
        if cfg is None and self.sampler.select == "best":
            cfg = GuidanceConfig(estimator="none")  # best-of-N by the critic, no gradient guidance
        if needs_critic(cfg, self.sampler.select) and critic is None:
            raise ValueError("this guidance config (or best-of-N selection) needs a critic: pass --critic")
        self.guidance = Guidance(critic, cfg) if cfg is not None else None
        # Terms other than the critic get a context (module docstring); critic-only configs take no new path.
        self.wants_objective_context = cfg is not None and any(e["name"] != CRITIC for e in cfg.objectives_)
        self._decode_affine = (affine_decode(policy.decode_actions, policy.spec.action_dim, policy.spec.padded_dim)
                               if self.wants_objective_context else None)
        self._constraints = Constraints.from_objectives(cfg.objectives_) if cfg is not None else None
        self.noise_seed = int(noise_seed)
        chunk_len = policy.spec.chunk_len
        if n_action_steps is None:
            n_action_steps = getattr(getattr(policy, "config", None), "n_action_steps", chunk_len)
        if not 1 <= int(n_action_steps) <= chunk_len:
            raise ValueError(f"n_action_steps must be in [1, chunk_len={chunk_len}], got {n_action_steps}")
        self.n_action_steps = int(n_action_steps)
        self.spec = spec
        self._hook = None
        if mode == "hook":  # LeRobot policies only: guidance inside LeRobot's own sampler
            if not hasattr(policy, "lerobot_chunk"):
                raise ValueError("hook mode needs a LeRobot policy (lerobot:<dir>); use mode='explicit'")
            if self.sampler.num_candidates != 1:
                raise ValueError("hook mode samples one chunk per observation: num_candidates must be 1")
            if self.wants_objective_context:
                raise ValueError("hook mode guides with the critic term only; use mode='explicit' for other "
                                 "objective terms and hard constraints")
            if self.guidance is not None:
                from gaflow.runtime.lerobot_hook import LeRobotGuidanceHook

                self._hook = LeRobotGuidanceHook(policy, self.guidance)
        self._generators: list[torch.Generator] | None = None
        self._default_generator = torch.Generator().manual_seed(self.noise_seed)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_spec(cls, spec: RuntimeSpec, *, policy=None, critic=None) -> GuidedRuntime:
        """Load the policy and critic named by ``spec`` (or reuse the given, already loaded ones)."""
        if policy is None:
            from gaflow.policies.registry import load_policy

            policy = load_policy(spec.policy)
        sampler = SamplerConfig(num_steps=spec.num_steps, num_candidates=spec.num_candidates, select=spec.select)
        cfg = GuidanceConfig.from_dict(spec.guidance) if spec.guidance is not None else None
        if critic is None and spec.critic is not None and needs_critic(cfg, spec.select):
            from gaflow.critic.train import load_critic

            critic = load_critic(spec.critic)
        return cls(policy, critic=critic, guidance=cfg, sampler=sampler, noise_seed=spec.noise_seed,
                   n_action_steps=spec.n_action_steps, spec=spec)

    def with_guidance(self, guidance: GuidanceConfig | dict | None, *, num_candidates: int = 1,
                      select: str = "first") -> GuidedRuntime:
        """The same loaded policy and critic under another guidance config (e.g. the arms of an evaluation)."""
        sampler = dataclasses.replace(self.sampler, num_candidates=num_candidates, select=select)
        spec = None
        if self.spec is not None:
            g = guidance.to_dict() if isinstance(guidance, GuidanceConfig) else guidance
            spec = dataclasses.replace(self.spec, guidance=g, num_candidates=num_candidates, select=select)
        return GuidedRuntime(self.policy, critic=self.critic, guidance=guidance, sampler=sampler,
                             noise_seed=self.noise_seed, n_action_steps=self.n_action_steps, spec=spec,
                             mode=self.mode)

    # ------------------------------------------------------------------ episodes and noise
    def start_episode(self, seed: int | Sequence[int]) -> None:
        """Start the per-episode noise stream(s): one seed, or one per row of the batches that follow."""
        seeds = [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
        self._generators = [torch.Generator().manual_seed(episode_noise_seed(s, self.noise_seed)) for s in seeds]
        if self.guidance is not None:  # the random control's own stream: one per episode (a batch: its first seed)
            self.guidance.start_episode(seeds[0])

    def _noise(self, batch: int) -> torch.Tensor:
        spec = self.policy.spec
        shape = (1, self.sampler.num_candidates, spec.chunk_len, spec.padded_dim)
        gens = self._generators
        if gens is None:
            return torch.randn((batch, *shape[1:]), generator=self._default_generator)
        if len(gens) != batch:
            raise ValueError(f"start_episode gave {len(gens)} noise streams, but the batch has {batch} observations")
        return torch.cat([torch.randn(shape, generator=g) for g in gens])

    # ------------------------------------------------------------------ inference
    def infer(self, observations: Mapping[str, Any] | Sequence[Mapping[str, Any]], *,
              noise: torch.Tensor | None = None, with_features: bool = True,
              objective_context: dict[str, Any] | None = None) -> Inference:
        """Actions for one env observation (a dict) or a list of them (stacked with
        :func:`gaflow.observations.stack_observations`, the format the policy trained on). ``objective_context``:
        per-row inputs of the objective terms (:mod:`gaflow.guidance.context`)."""
        obs_list = [observations] if isinstance(observations, Mapping) else list(observations)
        return self.infer_batch(stack_observations(obs_list), len(obs_list), noise=noise,
                                with_features=with_features, objective_context=objective_context)

    def infer_batch(self, batch: Any, batch_size: int, *, noise: torch.Tensor | None = None,
                    with_features: bool = True, objective_context: dict[str, Any] | None = None) -> Inference:
        """Actions for an observation batch already in the policy's input format (e.g. a LeRobot batch)."""
        t0 = time.perf_counter()
        noise = self._noise(batch_size) if noise is None else noise
        if self.mode == "hook":
            return self._infer_hook(batch, batch_size, noise, t0)
        ctx = self._objective_context(objective_context, batch_size)
        reports = None
        with torch.no_grad():
            context = self.policy.encode(batch)
            out = sample_chunks(self.policy, context=context, config=self.sampler, guidance=self.guidance,
                                noise=noise, objective_context=ctx)
            chunk = out.chunk
            if self._constraints is not None:  # after sampling, before decoding: the sampler stays one loop
                chunk, reports = self._constraints.apply(chunk, ctx, self.policy.decode_actions)
            actions = self.policy.decode_actions(chunk).cpu().numpy()  # (B, H, action_dim)
        latency = time.perf_counter() - t0
        feats = out.features
        if feats is None and with_features:
            feats = self.policy.critic_features(context)
        values = None
        if out.values is not None:
            values = out.values[torch.arange(out.values.shape[0]), out.selected]
        diagnostics = _row_summaries(out.diagnostics, batch_size, self.sampler.num_candidates)
        if diagnostics is not None:
            for row, report in zip(diagnostics, reports or [], strict=False):
                row.update(report)
        return Inference(actions, chunk, feats or {}, values, diagnostics, latency, out)

    def _objective_context(self, given: dict[str, Any] | None, batch_size: int) -> dict[str, Any] | None:
        """The caller's context plus the policy's affine decode, ``(B, d)`` rows (when any term may read it)."""
        if not self.wants_objective_context or self._decode_affine is None:
            return given
        scale, offset = self._decode_affine
        return {ACTION_SCALE: scale.expand(batch_size, -1), ACTION_OFFSET: offset.expand(batch_size, -1),
                **(given or {})}

    def _infer_hook(self, batch: Any, batch_size: int, noise: torch.Tensor, t0: float) -> Inference:
        """Hook mode: LeRobot's own ``predict_action_chunk``, guided through its RTC processor slot."""
        noise = noise.reshape(batch_size, *noise.shape[-2:])  # hook mode samples one candidate
        with torch.no_grad():
            if self._hook is None:
                chunk = self.policy.lerobot_chunk(batch, noise=noise)
            else:
                with self._hook:
                    chunk = self.policy.lerobot_chunk(batch, noise=noise)
            actions = self.policy.decode_actions(chunk).cpu().numpy()
        latency = time.perf_counter() - t0
        feats = dict(self._hook.features) if self._hook is not None and self._hook.features is not None else {}
        diagnostics = _row_summaries(self._hook.diagnostics if self._hook is not None else None, batch_size, 1)
        return Inference(actions, chunk, feats, None, diagnostics, latency, None)


def _row_summaries(diagnostics, batch_size: int, candidates: int) -> list[dict] | None:
    """Per observation row: the summary of its ``candidates`` samples' guidance diagnostics (``None``: unguided)."""
    if diagnostics is None:
        return None
    if batch_size == 1:
        return [diagnostics.summary()]
    return [diagnostics.select(torch.arange(i * candidates, (i + 1) * candidates)).summary()
            for i in range(batch_size)]
