"""A Gaussian base flow whose velocity is known in closed form — the analytic ground truth for guidance.

The data distribution is ``A ~ N(μ, diag(σ²))`` elementwise over the ``(H, padded_dim)`` chunk, with ``μ`` given
per observation. For the linear critic ``Q(A) = ⟨c, A⟩`` the KL-regularised target ``π ∝ π_base · exp(Q/β)`` is
again Gaussian: ``N(μ + σ²·c/β, diag(σ²))`` (:meth:`GaussianFlowPolicy.tilted_mean`).

Velocities (derived independently for each convention, so the two can check each other):

* forward, ``x = (1−t)ε + tA``: ``v = μ + (tσ² − (1−t)) / ((1−t)² + t²σ²) · (x − tμ)``
* LeRobot, ``x = tε + (1−t)A``: ``v = −μ + (t − (1−t)σ²) / (t² + (1−t)²σ²) · (x − (1−t)μ)``
"""

from __future__ import annotations

import torch

from gaflow.protocol import PolicySpec, TimeConvention


class GaussianFlowPolicy:
    """Exact flow-matching velocity of a Gaussian over chunks.

    ``encode(obs)`` takes the per-observation mean ``μ`` as ``(B, H, padded_dim)`` (or ``(B, H, action_dim)``,
    zero-padded). The critic feature ``"observation"`` is ``μ`` flattened over its real dims.
    """

    def __init__(self, spec: PolicySpec, std: torch.Tensor | float = 1.0) -> None:
        self.spec = spec
        std = torch.as_tensor(std, dtype=torch.float32)
        self.std = std.expand(spec.chunk_len, spec.padded_dim).clone()  # (H, Dp)

    def encode(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        mu = torch.as_tensor(obs, dtype=torch.float32)
        if mu.dim() != 3 or mu.shape[1] != self.spec.chunk_len:
            raise ValueError(f"GaussianFlowPolicy.encode expects a mean of shape (B, H, d); got {tuple(mu.shape)}")
        if mu.shape[2] < self.spec.padded_dim:
            mu = torch.nn.functional.pad(mu, (0, self.spec.padded_dim - mu.shape[2]))
        return {"mu": mu}

    def velocity(self, context: dict[str, torch.Tensor], x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mu, s2 = context["mu"], self.std.to(x_t) ** 2
        t = t.reshape(-1, 1, 1).to(x_t)
        if self.spec.convention is TimeConvention.FORWARD:
            var = (1 - t) ** 2 + t**2 * s2
            return mu + (t * s2 - (1 - t)) / var * (x_t - t * mu)
        var = t**2 + (1 - t) ** 2 * s2
        return -mu + (t - (1 - t) * s2) / var * (x_t - (1 - t) * mu)

    def critic_features(self, context: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mu = context["mu"][..., : self.spec.action_dim]
        return {"observation": mu.flatten(1)}

    def decode_actions(self, chunk: torch.Tensor) -> torch.Tensor:
        return chunk[..., : self.spec.action_dim]

    def tilted_mean(self, mu: torch.Tensor, c: torch.Tensor, beta: float) -> torch.Tensor:
        """Mean of ``π_base · exp(⟨c, A⟩/β)`` for real dims ``c`` of shape ``(H, action_dim)``."""
        d = self.spec.action_dim
        return mu[..., :d] + self.std[:, :d] ** 2 * c / beta
