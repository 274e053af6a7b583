"""A noisy analytic policy for ``toy-reach``: a Gaussian flow whose mean heads for the goal.

The chunk distribution is ``N(μ(obs), σ²)`` per step with ``μ`` pointing at the goal (capped speed), sampled
through the exact Gaussian velocity (:class:`~gaflow.policies.gaussian.GaussianFlowPolicy`). With ``σ`` large the
policy is mediocre — and whether a chunk succeeds depends on the chunk, so a critic can learn to steer it.
Action space: 2 real dims padded to 3 (the padded dim exercises the "never guide padding" rule).
"""

from __future__ import annotations

import torch

from gaflow.observations import STATE_KEY
from gaflow.policies.gaussian import GaussianFlowPolicy
from gaflow.protocol import PolicySpec, TimeConvention


class ToyReachPolicy:
    def __init__(self, chunk_len: int = 6, std: float = 1.5, gain: float = 0.6, n_action_steps: int = 3,
                 convention: TimeConvention = TimeConvention.LEROBOT, num_steps: int = 10) -> None:
        self.spec = PolicySpec(chunk_len, 2, 3, convention, num_steps)
        self.flow = GaussianFlowPolicy(self.spec, std=std)
        self.gain, self.n_action_steps = gain, n_action_steps

    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        state = torch.as_tensor(batch[STATE_KEY], dtype=torch.float32)  # (B, 4): pos, goal
        direction = state[:, 2:] - state[:, :2]
        mu = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-6) * self.gain  # (B, 2)
        mu = mu.unsqueeze(1).expand(-1, self.spec.chunk_len, -1)
        ctx = self.flow.encode(mu.contiguous())
        ctx["state"] = state
        return ctx

    def velocity(self, context, x_t, t):
        return self.flow.velocity(context, x_t, t)

    def critic_features(self, context) -> dict[str, torch.Tensor]:
        return {"state": context["state"]}

    def decode_actions(self, chunk: torch.Tensor) -> torch.Tensor:
        return chunk[..., :2].clamp(-1.0, 1.0)

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        # the chunk space is the env's: decode only drops padding and clips, which recorded actions already are
        actions = torch.as_tensor(actions, dtype=torch.float32)
        if actions.shape[-1] != self.spec.action_dim:
            raise ValueError(f"toy-reach actions have {self.spec.action_dim} dims, got {tuple(actions.shape)}")
        return actions.clone()
