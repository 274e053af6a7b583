"""Per-step, per-sample guidance diagnostics, kept as preallocated tensors (cheap to record)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FIELDS = ("raw_grad_norm", "applied_norm", "ratio", "gate", "q_mean", "q_std", "cosine")


@dataclass
class GuidanceDiagnostics:
    """Each field is ``(num_steps, B)``; NaN where guidance did not run at that step (schedule weight 0)."""

    raw_grad_norm: torch.Tensor
    applied_norm: torch.Tensor  # ‖Δv‖ actually added to the velocity (0 for the zero control)
    ratio: torch.Tensor  # ‖Δv‖ / ‖v‖ over the real dims
    gate: torch.Tensor
    q_mean: torch.Tensor
    q_std: torch.Tensor
    cosine: torch.Tensor  # cos(raw g, applied Δ); NaN when nothing was applied
    nonfinite: int = 0  # (sample, step) pairs that fell back to unguided for a non-finite Q or gradient
    fallback: int = 0  # (sample, step) pairs that fell back for ensemble disagreement
    posthoc_skipped: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, num_steps: int, batch: int) -> GuidanceDiagnostics:
        return cls(**{f: torch.full((num_steps, batch), float("nan")) for f in FIELDS})

    def record(self, step: int, **values: torch.Tensor) -> None:
        for name, value in values.items():
            getattr(self, name)[step] = value.detach().to("cpu", torch.float32)

    def select(self, index: torch.Tensor) -> GuidanceDiagnostics:
        """Keep only the columns (samples) in ``index``."""
        kept = {f: getattr(self, f)[:, index] for f in FIELDS}
        return GuidanceDiagnostics(**kept, nonfinite=self.nonfinite, fallback=self.fallback,
                                   posthoc_skipped=self.posthoc_skipped, extra=dict(self.extra))

    def summary(self) -> dict:
        """Means over steps and samples (NaN-aware), plus the ratio's median and the counters."""
        out: dict[str, float] = {}
        for f in FIELDS:
            v = getattr(self, f)
            out[f"{f}_mean"] = float(torch.nanmean(v)) if torch.isfinite(v).any() else float("nan")
        r = self.ratio[torch.isfinite(self.ratio)]
        out["ratio_median"] = float(r.median()) if r.numel() else float("nan")
        for f in ("ratio", "gate"):  # per flow step, averaged over samples (NaN where guidance did not run)
            v = getattr(self, f)
            ok = torch.isfinite(v)
            per_step = torch.where(ok, v, torch.zeros_like(v)).sum(1) / ok.sum(1).clamp_min(1)
            out[f"{f}_by_step"] = [float(x) if n else float("nan") for x, n in zip(per_step, ok.sum(1), strict=True)]
        out["nonfinite"] = self.nonfinite
        out["fallback"] = self.fallback
        out["posthoc_skipped"] = self.posthoc_skipped
        return out
