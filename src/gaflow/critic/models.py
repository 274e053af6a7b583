"""Critic architectures. Any ``nn.Module`` (or callable) mapping ``(features, chunk)`` to values works with the
guided sampler; :func:`evaluate_critic` normalises its output to ``(K, B)`` (``K`` ensemble members).

``chunk`` is ``(B, H, action_dim)`` in the policy's normalised action space — only the real action dims.
``features`` is the dict returned by the policy's ``critic_features`` (each ``(B, F)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gaflow.normalize import Normalizer


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


def feature_distance(critic, features: dict[str, torch.Tensor]) -> torch.Tensor:
    """How far each sample's features lie from the critic's training data: the RMS z-score ``(B,)`` of every
    feature dimension the critic reads, against its training rows' mean and std (its normaliser). Near 1 in
    distribution; large where the critic never saw anything like this observation (a new task, a new scene)."""
    if getattr(critic, "normalizer", None) is None:
        raise ValueError("this critic has no feature statistics to measure distances against")
    z = torch.cat([critic.normalizer.normalize(k, features[k].float()) for k in critic.feature_keys], dim=-1)
    return z.pow(2).mean(-1).sqrt()


@dataclass(frozen=True)
class PreparedEnsemble:
    """:meth:`EnsembleMLPCritic.prepare` for one batch of features: computed once per chunk, read every step."""

    first: torch.Tensor  # (K, B, hidden0) the first layer's feature part W_f·f + b
    chunk_weight: torch.Tensor  # (K, H·d, hidden0) the first layer's chunk rows W_a
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # (bias (K, 1, out), weight (K, in, out)) of the rest


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
        feature_stats: dict[str, dict[str, torch.Tensor]] | None = None,
        use_chunk: bool = True,
    ) -> None:
        super().__init__()
        self.feature_keys = sorted(feature_dims)
        self.feature_dims = dict(feature_dims)
        self.chunk_len, self.action_dim, self.num_members = chunk_len, action_dim, num_members
        self.use_chunk = use_chunk  # False: a state-value network V(features) (chunked IQL)
        self.hidden, self.activation = tuple(hidden), activation
        # Features are standardised with the project's one normaliser (stats from the critic's training rows);
        # chunks are already in the policy's normalised action space.
        self.normalizer = Normalizer(feature_stats, "mean_std") if feature_stats else None
        in_dim = sum(feature_dims.values()) + (chunk_len * action_dim if use_chunk else 0)
        sizes = [in_dim, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default init, drawn independently per member
            self.weights.append(nn.Parameter(torch.empty(num_members, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_members, 1, fan_out).uniform_(-bound, bound)))
        self.act = {"silu": nn.functional.silu, "relu": nn.functional.relu, "tanh": torch.tanh}[activation]

    def inputs(self, features: dict[str, torch.Tensor], chunk: torch.Tensor | None) -> torch.Tensor:
        if self.use_chunk and (chunk is None or chunk.shape[1:] != (self.chunk_len, self.action_dim)):
            raise ValueError(
                f"critic expects chunks of shape (B, {self.chunk_len}, {self.action_dim}); "
                f"got {None if chunk is None else tuple(chunk.shape)}"
            )
        dtype = chunk.dtype if chunk is not None else torch.float32
        parts = []
        for k in self.feature_keys:
            if k not in features:
                raise KeyError(f"critic needs feature {k!r}; the policy provided {sorted(features)}")
            f = features[k]
            if f.shape[-1] != self.feature_dims[k]:
                raise ValueError(f"feature {k!r} has dim {f.shape[-1]}, critic expects {self.feature_dims[k]}")
            f = f.to(dtype)
            if self.normalizer is not None:
                f = self.normalizer.normalize(k, f)
            parts.append(f)
        if self.use_chunk:
            parts.append(chunk.flatten(1))
        return torch.cat(parts, dim=-1)

    def forward(self, features: dict[str, torch.Tensor], chunk: torch.Tensor | None) -> torch.Tensor:
        h = self.inputs(features, chunk).unsqueeze(0).expand(self.num_members, -1, -1)  # (K, B, in)
        return self.forward_inputs(h)

    def prepare(self, features: dict[str, torch.Tensor]) -> PreparedEnsemble:
        """What guidance computes once per chunk for fixed features (:class:`PreparedEnsemble`): the first
        layer's feature part ``W_f·f + b`` and the weights as plain tensors.

        Features do not change over the flow steps, so each step only adds ``W_a·chunk`` (:meth:`forward_prepared`)
        — the same values as :meth:`forward`, for less work.
        """
        if not self.use_chunk:
            raise ValueError("prepare() is for critics over chunks")
        b = next(iter(features.values())).shape[0] if features else 1
        dummy = torch.zeros(b, self.chunk_len, self.action_dim, dtype=self.weights[0].dtype,
                            device=self.weights[0].device)
        f = self.inputs(features, dummy)[:, : -self.chunk_len * self.action_dim]  # (B, F)
        # plain tensors, fetched once: indexing a ParameterList costs microseconds per layer and step
        weights = [w.detach() for w in self.weights]
        biases = [b.detach() for b in self.biases]
        first = torch.baddbmm(biases[0], f.unsqueeze(0).expand(self.num_members, -1, -1), weights[0][:, : f.shape[1]])
        return PreparedEnsemble(first=first.detach(), chunk_weight=weights[0][:, f.shape[1]:],
                                layers=tuple(zip(biases[1:], weights[1:], strict=True)))

    def forward_prepared(self, prepared: PreparedEnsemble, chunk: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` given :meth:`prepare`'s output for the same features (the chunk alone is
        differentiable: guidance never needs the weights' gradient)."""
        if chunk.shape[1:] != (self.chunk_len, self.action_dim):
            raise ValueError(
                f"critic expects chunks of shape (B, {self.chunk_len}, {self.action_dim}); got {tuple(chunk.shape)}"
            )
        a = chunk.reshape(1, chunk.shape[0], -1).expand(self.num_members, -1, -1)  # (K, B, H·d)
        h = torch.baddbmm(prepared.first, a, prepared.chunk_weight)
        for bias, weight in prepared.layers:  # as forward_inputs(start=1): activation, then the next layer
            h = torch.baddbmm(bias, self.act(h), weight)
        return h.squeeze(-1)  # (K, B)

    def forward_inputs(self, h: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``(K, B, in)`` member-specific inputs → ``(K, B)`` (training feeds each member its own batch).

        ``start=1``: ``h`` is already the first layer's pre-activation."""
        n = len(self.weights)
        if start == 1:
            h = self.act(h) if n > 1 else h
        for i in range(start, n):
            h = torch.baddbmm(self.biases[i], h, self.weights[i])
            if i < n - 1:
                h = self.act(h)
        return h.squeeze(-1)  # (K, B)


class TransformerCritic(nn.Module):
    """A small transformer over ``[feature tokens…, chunk-step tokens…]`` with a learned readout token.

    Each selected feature vector (observation, task, state) becomes one token; each of the ``H`` chunk steps
    becomes one token (with a learned position embedding). ``K`` members are independent modules evaluated in a
    loop (the MLP ensemble is the batched, fast one).
    """

    def __init__(
        self,
        feature_dims: dict[str, int],
        chunk_len: int,
        action_dim: int,
        d_model: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        num_members: int = 3,
        feature_stats: dict[str, dict[str, torch.Tensor]] | None = None,
    ) -> None:
        super().__init__()
        self.feature_keys = sorted(feature_dims)
        self.feature_dims = dict(feature_dims)
        self.chunk_len, self.action_dim, self.num_members = chunk_len, action_dim, num_members
        self.d_model, self.num_layers, self.num_heads = d_model, num_layers, num_heads
        self.normalizer = Normalizer(feature_stats, "mean_std") if feature_stats else None
        self.members = nn.ModuleList([self._member() for _ in range(num_members)])

    def _member(self) -> nn.Module:
        m = nn.Module()
        m.feature_proj = nn.ModuleDict({k: nn.Linear(d, self.d_model) for k, d in self.feature_dims.items()})
        m.action_proj = nn.Linear(self.action_dim, self.d_model)
        m.pos = nn.Parameter(torch.randn(self.chunk_len + len(self.feature_dims) + 1, self.d_model) * 0.02)
        m.readout = nn.Parameter(torch.zeros(1, 1, self.d_model))
        layer = nn.TransformerEncoderLayer(self.d_model, self.num_heads, 2 * self.d_model, dropout=0.0,
                                           batch_first=True, norm_first=True)
        m.encoder = nn.TransformerEncoder(layer, self.num_layers, enable_nested_tensor=False)
        m.head = nn.Linear(self.d_model, 1)
        return m

    def _features(self, features: dict[str, torch.Tensor], dtype) -> dict[str, torch.Tensor]:
        out = {}
        for k in self.feature_keys:
            if k not in features:
                raise KeyError(f"critic needs feature {k!r}; the policy provided {sorted(features)}")
            f = features[k].to(dtype)
            out[k] = self.normalizer.normalize(k, f) if self.normalizer is not None else f
        return out

    def member_forward(self, m: nn.Module, feats: dict[str, torch.Tensor], chunk: torch.Tensor) -> torch.Tensor:
        b = chunk.shape[0]
        tokens = [m.readout.expand(b, -1, -1)]
        tokens += [m.feature_proj[k](feats[k]).unsqueeze(1) for k in self.feature_keys]
        tokens.append(m.action_proj(chunk))
        h = torch.cat(tokens, dim=1) + m.pos
        return m.head(m.encoder(h)[:, 0]).squeeze(-1)

    def forward(self, features: dict[str, torch.Tensor], chunk: torch.Tensor) -> torch.Tensor:
        if chunk.shape[1:] != (self.chunk_len, self.action_dim):
            raise ValueError(
                f"critic expects chunks of shape (B, {self.chunk_len}, {self.action_dim}); got {tuple(chunk.shape)}"
            )
        feats = self._features(features, chunk.dtype)
        return torch.stack([self.member_forward(m, feats, chunk) for m in self.members])  # (K, B)
