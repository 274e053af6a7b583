"""The one sampler loop for every base policy, guided or not.

>>> import torch
>>> from gaflow.policies import GaussianFlowPolicy, PolicySpec
>>> policy = GaussianFlowPolicy(PolicySpec(chunk_len=4, action_dim=2, padded_dim=3, convention="lerobot"))
>>> out = sample_chunks(policy, torch.zeros(2, 4, 3), generator=torch.Generator().manual_seed(0))
>>> out.chunk.shape
torch.Size([2, 4, 3])

Euler by default (``x ← x + dt·v`` on the policy's time grid; LeRobot's own loop), midpoint optional. ``N``
candidates per observation share the observation's context (encoded once). Noise is passed in or drawn from a
seeded generator, so every arm of an evaluation can start from the same noise.

Guidance needs gradients even when the caller runs under ``torch.no_grad()`` or ``torch.inference_mode()``: the
policy keeps running in the caller's mode (inference mode is the fastest for it), and only the critic's step
re-enables autograd, in a narrow scope, on a leaf made from the real action dims (the padded state is never
copied; the features are made normal tensors once per chunk).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from gaflow.convention import step_size, time_grid
from gaflow.guidance.autograd import autograd_enabled, normal_tensors
from gaflow.guidance.checks import integer
from gaflow.guidance.config import Guidance
from gaflow.guidance.diagnostics import GuidanceDiagnostics
from gaflow.guidance.estimators import FlowStep, posthoc_ascent
from gaflow.guidance.strength import project_trust_region
from gaflow.protocol import expand_context


@dataclass
class SamplerConfig:
    num_steps: int | None = None  # None: the policy's own default
    method: Literal["euler", "midpoint"] = "euler"
    num_candidates: int = 1  # N chunks per observation
    select: Literal["first", "best"] = "first"  # best: best-of-N by the critic's aggregate value
    score_candidates: bool = False  # also return the critic's value of every final candidate (one more forward)

    def __post_init__(self) -> None:
        if self.method not in ("euler", "midpoint"):
            raise ValueError(f"sampler method must be 'euler' or 'midpoint', got {self.method!r}")
        if self.select not in ("first", "best"):
            raise ValueError(f"select must be 'first' or 'best', got {self.select!r}")
        integer("num_candidates", self.num_candidates, low=1)
        if self.num_steps is not None:
            integer("num_steps", self.num_steps, low=1)
        if not isinstance(self.score_candidates, bool):
            raise ValueError(f"score_candidates must be true or false, got {self.score_candidates!r}")


@dataclass
class SampleResult:
    chunk: torch.Tensor  # (B, H, Dp) the selected chunk per observation
    candidates: torch.Tensor  # (B, N, H, Dp)
    selected: torch.Tensor  # (B,) index of the chosen candidate
    values: torch.Tensor | None  # (B, N) critic term's aggregate of each final candidate (best-of-N, score_candidates)
    diagnostics: GuidanceDiagnostics | None  # over all B·N candidates, (num_steps, B·N) per field
    features: dict[str, torch.Tensor] | None = None  # critic features of the observations, (B, F)


def sample_chunks(
    policy,
    obs: Any = None,
    *,
    context: Any = None,
    config: SamplerConfig | None = None,
    guidance: Guidance | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    objective_context: dict[str, Any] | None = None,
) -> SampleResult:
    """Sample chunks from ``policy`` for an observation batch (or a context already encoded from one).

    ``noise``: ``(B, H, Dp)`` when ``N = 1``, or ``(B, N, H, Dp)``; otherwise drawn from ``generator``.
    ``guidance``: ``None`` samples the base policy. Best-of-N (``config.select == "best"``) ranks by the guidance's
    critic term; use ``GuidanceConfig(estimator="none")`` for selection without gradient guidance.
    ``objective_context``: per-request inputs of the objective terms (e.g. previously executed actions), ``(B, …)``
    tensors expanded to the ``B·N`` candidates like the critic features.
    """
    cfg = config or SamplerConfig()
    spec = policy.spec
    if context is None:
        if obs is None:
            raise ValueError("sample_chunks needs an observation batch (obs) or an encoded context")
        context = policy.encode(obs)
    if cfg.select == "best" and guidance is None:
        raise ValueError("select='best' needs a critic: pass guidance (estimator='none' for selection only)")
    if (cfg.select == "best" or cfg.score_candidates) and guidance is not None and not guidance.config.has_critic_term:
        raise ValueError("select='best' / score_candidates rank by the critic term, but GuidanceConfig.objectives "
                         "has none")

    n, d, num_steps = cfg.num_candidates, spec.action_dim, cfg.num_steps or spec.num_steps
    critic_dims = getattr(guidance.critic, "action_dim", None) if guidance is not None else None
    if critic_dims is not None and critic_dims != d:
        raise ValueError(f"the critic scores chunks with action_dim {critic_dims}, but the policy's real action "
                         f"dim is {d}: train the critic on this policy's rollouts")
    features = policy.critic_features(context) if guidance is not None else None
    ctx = expand_context(context, n, policy)
    shape_tail = (spec.chunk_len, spec.padded_dim)

    if noise is None:
        probe = next(iter(features.values())) if features else None
        batch = _batch_size(context, probe)
        x = torch.randn((batch * n, *shape_tail), generator=generator)
    else:
        x = noise.reshape(-1, *shape_tail).clone()
        if noise.dim() == 4 and noise.shape[1] != n:
            raise ValueError(f"noise has {noise.shape[1]} candidates per observation; config asks for {n}")
    bn = x.shape[0]
    if bn % n:
        raise ValueError(f"noise batch {bn} is not a multiple of num_candidates {n}")
    batch = bn // n

    grid = time_grid(spec.convention, num_steps)
    diag, objective = None, None
    if guidance is not None:
        with autograd_enabled():  # buffers and features must be normal tensors, not inference tensors
            diag = GuidanceDiagnostics.empty(num_steps, bn)
            feats = {k: _rows(normal_tensors(v), n) for k, v in (features or {}).items()}
            extra = None if objective_context is None else {
                k: _rows(normal_tensors(v), n) if isinstance(v, torch.Tensor) else v
                for k, v in objective_context.items()}
            objective = guidance.objective(feats, extra)
    guiding = guidance is not None and guidance.active
    needs_graph = guiding and guidance.config.estimator in ("clean_jacobian", "bptt")
    graph_ctx = None

    def velocity(x_, t_):
        return policy.velocity(ctx, x_, t_)

    def graph_velocity(x_, t_):
        return policy.velocity(graph_ctx, x_, t_)

    def field(x_, t_, k, record):
        """The (guided) velocity at (x_, t_) for step k."""
        w = guidance.weight(k, num_steps) if guiding else 0.0
        if w == 0.0:
            return velocity(x_, t_)
        v = None if needs_graph else velocity(x_, t_)
        with autograd_enabled():
            # x_, t_ and v are only read (the estimator builds its own leaf from the real dims), so they go in as
            # they are, inference tensors or not: no copy of the padded state per step
            step = FlowStep(
                x=normal_tensors(x_) if needs_graph else x_, t=normal_tensors(t_) if needs_graph else t_, step=k,
                grid=grid, convention=spec.convention, action_dim=d,
                velocity_fn=graph_velocity if needs_graph else velocity, velocity=v,
            )
            return guidance.guided_velocity(step, objective, w, diag if record else None)

    if needs_graph:
        with autograd_enabled():
            graph_ctx = normal_tensors(ctx)
    tr = guidance.config.trust_region if guiding else None
    x_ref = x.clone() if tr is not None else None

    for k in range(num_steps):
        t0, t1 = grid[k], grid[k + 1]
        dt = step_size(spec.convention, num_steps)  # a Python float, as in LeRobot's euler_integrate
        t_vec = t0.to(x).expand(bn)
        if cfg.method == "euler":
            v = field(x, t_vec, k, True)
            x = x + dt * v
            if x_ref is not None:
                x_ref = x_ref + dt * velocity(x_ref, t_vec)
        else:
            t_mid = (t0 + 0.5 * (t1 - t0)).to(x).expand(bn)
            v = field(x, t_vec, k, True)
            v_mid = field(x + 0.5 * dt * v, t_mid, k, False)
            x = x + dt * v_mid
            if x_ref is not None:
                x_mid = x_ref + 0.5 * dt * velocity(x_ref, t_vec)
                x_ref = x_ref + dt * velocity(x_mid, t_mid)
        x = x.detach()
        if x_ref is not None:
            x = project_trust_region(x, x_ref, tr, d)

    values = None
    if guidance is not None:
        with autograd_enabled():
            if guidance.config.posthoc_steps > 0:
                x_post, skipped = posthoc_ascent(
                    normal_tensors(x), objective, guidance.config.posthoc_steps, guidance.config.posthoc_lr, d
                )
                x = x_post.detach()
                diag.posthoc_skipped = skipped
            if cfg.select == "best" or cfg.score_candidates:
                values = objective.score(normal_tensors(x)[..., :d]).reshape(batch, n)
    candidates = x.reshape(batch, n, *shape_tail)
    if cfg.select == "best":
        scores = torch.nan_to_num(values, nan=float("-inf"))
        selected = scores.argmax(dim=1)
    else:
        selected = torch.zeros(batch, dtype=torch.long)
    chunk = candidates[torch.arange(batch), selected]
    return SampleResult(chunk, candidates, selected, values, diag, features)


def _rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """One row per candidate (``repeat_interleave``; ``n = 1`` keeps the tensor as it is, no copy)."""
    return x if n == 1 else x.repeat_interleave(n, dim=0)


def _batch_size(context: Any, probe: torch.Tensor | None) -> int:
    if probe is not None:
        return probe.shape[0]
    stack = [context]
    while stack:
        c = stack.pop()
        if isinstance(c, torch.Tensor):
            return c.shape[0]
        if isinstance(c, dict):
            stack.extend(c.values())
        elif isinstance(c, (list, tuple)):
            stack.extend(c)
    raise ValueError("cannot infer the batch size from the context; pass noise explicitly")
