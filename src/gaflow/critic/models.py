"""Critic architectures. Any ``nn.Module`` (or callable) mapping ``(features, chunk)`` to values works with the
guided sampler; :func:`evaluate_critic` normalises its output to ``(K, B)`` (``K`` ensemble members).

``chunk`` is ``(B, H, action_dim)`` in the policy's normalised action space — only the real action dims.
``features`` is the dict returned by the policy's ``critic_features`` (each ``(B, F)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def evaluate_critic(critic, features: dict[str, torch.Tensor], chunk: torch.Tensor) -> torch.Tensor:
    """Call ``critic`` and return member values ``(K, B)``; a ``(B,)`` output is one member."""
    q = critic(features, chunk)
    if q.dim() == 1:
        q = q.unsqueeze(0)
    if q.dim() != 2 or q.shape[1] != chunk.shape[0]:
        raise ValueError(
            f"critic must return (B,) or (K, B) values for a batch of {chunk.shape[0]}; got {tuple(q.shape)}"
        )
    return q


class EnsembleMLPCritic(nn.Module):
    """``K`` independent MLP critics evaluated in **one batched call** (weights stacked as ``(K, in, out)``).

    Input per sample: the selected feature vectors concatenated with the flattened chunk. Members get
    independent initialisation (and, in training, independent data order) — see :mod:`gaflow.critic`.

    >>> import torch
    >>> q = EnsembleMLPCritic({"observation": 8}, chunk_len=4, action_dim=2, hidden=(32,), num_members=3)
    >>> q({"observation": torch.zeros(5, 8)}, torch.zeros(5, 4, 2)).shape
    torch.Size([3, 5])
    """

    def __init__(
        self,
        feature_dims: dict[str, int],
        chunk_len: int,
        action_dim: int,
        hidden: Sequence[int] = (256, 256),
        num_members: int = 3,
        activation: str = "silu",
    ) -> None:
        super().__init__()
        self.feature_keys = sorted(feature_dims)
        self.feature_dims = dict(feature_dims)
        self.chunk_len, self.action_dim, self.num_members = chunk_len, action_dim, num_members
        in_dim = sum(feature_dims.values()) + chunk_len * action_dim
        sizes = [in_dim, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default init, drawn independently per member
            self.weights.append(nn.Parameter(torch.empty(num_members, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_members, 1, fan_out).uniform_(-bound, bound)))
        self.act = {"silu": nn.functional.silu, "relu": nn.functional.relu, "tanh": torch.tanh}[activation]

    def inputs(self, features: dict[str, torch.Tensor], chunk: torch.Tensor) -> torch.Tensor:
        if chunk.shape[1:] != (self.chunk_len, self.action_dim):
            raise ValueError(
                f"critic expects chunks of shape (B, {self.chunk_len}, {self.action_dim}); got {tuple(chunk.shape)}"
            )
        parts = []
        for k in self.feature_keys:
            if k not in features:
                raise KeyError(f"critic needs feature {k!r}; the policy provided {sorted(features)}")
            f = features[k]
            if f.shape[-1] != self.feature_dims[k]:
                raise ValueError(f"feature {k!r} has dim {f.shape[-1]}, critic expects {self.feature_dims[k]}")
            parts.append(f.to(chunk.dtype))
        parts.append(chunk.flatten(1))
        return torch.cat(parts, dim=-1)

    def forward(self, features: dict[str, torch.Tensor], chunk: torch.Tensor) -> torch.Tensor:
        h = self.inputs(features, chunk).unsqueeze(0).expand(self.num_members, -1, -1)  # (K, B, in)
        n = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < n - 1:
                h = self.act(h)
        return h.squeeze(-1)  # (K, B)
