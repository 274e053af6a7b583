"""The one normaliser of gaflow (policies, critics and data code all use it): per-feature affine maps computed
from dataset statistics.

Statistics use LeRobot's ``meta/stats.json`` layout (``{"action": {"mean": [...], "std": [...], "min": [...],
"max": [...]}, ...}``), so :meth:`Normalizer.from_stats` accepts a LeRobot dataset's stats directly or stats computed
from the frames actually used (:func:`compute_stats`). Two modes:

* ``mean_std``: ``(x − mean) / std`` (std floored at ``eps``),
* ``min_max``: ``2·(x − min)/(max − min) − 1`` → ``[−1, 1]`` (range floored at ``eps``).

The normaliser is saved with a checkpoint (safetensors tensors ``<key>/<stat>``; the mode is in the policy config)
and reloaded exactly. Critics and guidance work in the *normalised* action space the policy samples in; only
:meth:`unnormalize` of ``"action"`` maps back to environment actions.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

MODES = ("mean_std", "min_max")


def compute_stats(values: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{key: (N, D) tensor}`` → ``{key: {"mean", "std", "min", "max"}}`` (float32, shape ``(D,)``)."""
    out = {}
    for key, x in values.items():
        x = torch.as_tensor(x, dtype=torch.float64).reshape(len(x), -1)
        if x.shape[0] == 0:
            raise ValueError(f"cannot compute normalisation stats of {key!r} from zero frames")
        out[key] = {
            "mean": x.mean(0).float(), "std": x.std(0, unbiased=False).float(),
            "min": x.min(0).values.float(), "max": x.max(0).values.float(),
        }
    return out


class Normalizer:
    """Affine normalisation of named features; ``normalize``/``unnormalize`` broadcast over leading dims."""

    def __init__(self, stats: Mapping[str, Mapping[str, torch.Tensor]], mode: str = "mean_std", eps: float = 1e-6):
        if mode not in MODES:
            raise ValueError(f"normalisation mode must be one of {MODES}, got {mode!r}")
        self.mode, self.eps = mode, eps
        need = ("mean", "std") if mode == "mean_std" else ("min", "max")
        self.scale: dict[str, torch.Tensor] = {}
        self.offset: dict[str, torch.Tensor] = {}
        self.stats: dict[str, dict[str, torch.Tensor]] = {}
        for key, st in stats.items():
            missing = [s for s in need if s not in st]
            if missing:
                raise ValueError(f"normalisation stats of {key!r} lack {missing} (mode {mode})")
            st = {s: torch.as_tensor(np.asarray(v), dtype=torch.float32).reshape(-1) for s, v in st.items()
                  if s in ("mean", "std", "min", "max")}
            self.stats[key] = st
            if mode == "mean_std":
                self.offset[key], self.scale[key] = st["mean"], st["std"].clamp_min(eps)
            else:
                # x_n = 2(x − min)/(max − min) − 1 = (x − centre) / half_range
                self.offset[key] = (st["max"] + st["min"]) / 2
                self.scale[key] = ((st["max"] - st["min"]) / 2).clamp_min(eps)

    @classmethod
    def from_stats(cls, stats: Mapping[str, Mapping], keys: list[str] | tuple[str, ...], mode: str = "mean_std"):
        missing = [k for k in keys if k not in stats]
        if missing:
            raise ValueError(f"dataset stats have no entry for feature(s) {missing}")
        return cls({k: stats[k] for k in keys}, mode)

    def _check(self, key: str, x: torch.Tensor) -> None:
        if key not in self.scale:
            raise KeyError(f"the normaliser has no stats for {key!r} (it has {sorted(self.scale)})")
        if x.shape[-1] != self.scale[key].shape[0]:
            raise ValueError(
                f"{key!r} has last dimension {x.shape[-1]}, but its normalisation stats have {self.scale[key].shape[0]}"
            )

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        self._check(key, x)
        return (x - self.offset[key].to(x)) / self.scale[key].to(x)

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        self._check(key, x)
        return x * self.scale[key].to(x) + self.offset[key].to(x)

    def dim(self, key: str) -> int:
        return int(self.scale[key].shape[0])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat ``{"<key>/<stat>": tensor}`` for safetensors."""
        return {f"{k}/{s}": v.contiguous() for k, st in self.stats.items() for s, v in st.items()}

    @classmethod
    def from_state_dict(cls, tensors: Mapping[str, torch.Tensor], mode: str = "mean_std") -> Normalizer:
        stats: dict[str, dict[str, torch.Tensor]] = {}
        for name, v in tensors.items():
            key, _, stat = name.rpartition("/")
            if not key:
                raise ValueError(f"normaliser tensor name {name!r} is not '<feature>/<stat>'")
            stats.setdefault(key, {})[stat] = v
        return cls(stats, mode)
