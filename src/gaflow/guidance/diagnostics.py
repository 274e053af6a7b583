"""Per-step, per-sample guidance diagnostics, kept in one preallocated tensor (one copy per flow step)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FIELDS = ("raw_grad_norm", "applied_norm", "ratio", "gate", "q_mean", "q_std", "cosine")


@dataclass
class GuidanceDiagnostics:
    """``data[i]`` is field ``FIELDS[i]`` as ``(num_steps, B)``; NaN where guidance did not run (schedule 0).

    Fields (also attributes): raw ‖g‖; applied ‖Δv‖ actually added to the velocity (0 for the zero control);
    ratio ‖Δv‖/‖v‖ over the real dims; gate; ensemble mean and std of Q; cos(raw g, applied Δ) (NaN when nothing
    was applied).
    """

    data: torch.Tensor  # (len(FIELDS), num_steps, B)
    nonfinite: int = 0  # (sample, step) pairs that fell back to unguided for a non-finite Q or gradient
    fallback: int = 0  # (sample, step) pairs that fell back for ensemble disagreement
    posthoc_skipped: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, num_steps: int, batch: int) -> GuidanceDiagnostics:
        return cls(torch.full((len(FIELDS), num_steps, batch), float("nan")))

    def __getattr__(self, name: str) -> torch.Tensor:
        if name in FIELDS:
            return self.data[FIELDS.index(name)]
        raise AttributeError(name)

    def record(self, step: int, values: list[torch.Tensor]) -> None:
        """``values``: one ``(B,)`` tensor per field, in ``FIELDS`` order."""
        self.data[:, step] = torch.stack(values).detach().to("cpu", torch.float32)

    def select(self, index: torch.Tensor) -> GuidanceDiagnostics:
        """Keep only the columns (samples) in ``index``."""
        return GuidanceDiagnostics(self.data[:, :, index], self.nonfinite, self.fallback, self.posthoc_skipped,
                                   dict(self.extra))

    def summary(self) -> dict:
        """Means over steps and samples (NaN-aware), the ratio's median, per-step curves and the counters."""
        out: dict = {}
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
