"""Per-step, per-sample guidance diagnostics, kept in one preallocated tensor (one copy per flow step)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FIELDS = ("raw_grad_norm", "applied_norm", "ratio", "gate", "q_mean", "q_std", "cosine", "raw_ratio")
TERM_FIELDS = ("value", "grad_norm", "share")


@dataclass
class GuidanceDiagnostics:
    """``data[i]`` is field ``FIELDS[i]`` as ``(num_steps, B)``; NaN where guidance did not run (schedule 0).

    Fields (also attributes): raw ‖g‖ (the objective's gradient); applied ‖Δv‖ actually added to the velocity (0
    for the zero control); ratio ‖Δv‖/‖v‖ over the real dims; gate; the critic term's ensemble mean and std of Q
    (NaN when the objective has no critic term); cos(raw g, applied Δ) (NaN when nothing was applied); raw_ratio
    ‖g‖/‖v‖ *before* the strength rescale — under a relative strength ``ratio`` is ρ by construction, so the
    strength check (is the critic's pull negligible or overwhelming?) reads ``raw_ratio``.

    ``terms[name]`` is ``(len(TERM_FIELDS), num_steps, B)`` per objective term: its own (unweighted) value, the
    norm of its weighted share ``w·∇term`` of g (w.r.t. the chunk the term read), and its share of the applied
    guidance ``⟨w·∇term, g⟩ / ‖g‖²`` — the terms' shares sum to 1, and strength, gate and schedule scale every
    term alike, so this is also each term's share of the applied ``Δv`` (except under the ``random`` control). Exact
    for the J = I estimators (``clean_estimate``, ``noisy_point``), where g is the sum of the shares; under
    ``clean_jacobian`` / ``bptt`` g is taken w.r.t. ``x_t`` and the shares are an approximation.
    """

    data: torch.Tensor  # (len(FIELDS), num_steps, B)
    nonfinite: int = 0  # (sample, step) pairs that fell back to unguided for a non-finite Q or gradient
    fallback: int = 0  # (sample, step) pairs that fell back for ensemble disagreement
    posthoc_skipped: int = 0
    extra: dict = field(default_factory=dict)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # name → (len(TERM_FIELDS), num_steps, B)

    @classmethod
    def empty(cls, num_steps: int, batch: int) -> GuidanceDiagnostics:
        return cls(torch.full((len(FIELDS), num_steps, batch), float("nan")))

    def __getattr__(self, name: str) -> torch.Tensor:
        if name in FIELDS:
            return self.data[FIELDS.index(name)]
        raise AttributeError(name)

    def record(self, step: int, values: list[torch.Tensor], terms: dict[str, list[torch.Tensor]] | None = None
               ) -> None:
        """``values``: one ``(B,)`` tensor per field, in ``FIELDS`` order; ``terms``: term name → one ``(B,)``
        tensor per ``TERM_FIELDS``. One copy to the CPU for all of them (one device sync per flow step)."""
        terms = terms or {}
        rows = torch.stack([*values, *(v for vs in terms.values() for v in vs)]).detach().to("cpu", torch.float32)
        self.data[:, step] = rows[: len(FIELDS)]
        for i, name in enumerate(terms):
            if name not in self.terms:
                self.terms[name] = torch.full((len(TERM_FIELDS), *self.data.shape[1:]), float("nan"))
            start = len(FIELDS) + i * len(TERM_FIELDS)
            self.terms[name][:, step] = rows[start: start + len(TERM_FIELDS)]

    def select(self, index: torch.Tensor) -> GuidanceDiagnostics:
        """Keep only the columns (samples) in ``index``."""
        return GuidanceDiagnostics(self.data[:, :, index], self.nonfinite, self.fallback, self.posthoc_skipped,
                                   dict(self.extra), {k: v[:, :, index] for k, v in self.terms.items()})

    def summary(self) -> dict:
        """Means over steps and samples (NaN-aware), the ratios' medians, per-step curves, per-term means and the
        counters."""
        out: dict = {}
        for f in FIELDS:
            out[f"{f}_mean"] = _nanmean(getattr(self, f))
        out["ratio_median"] = _nanmedian(self.ratio)
        out["raw_ratio_median"] = _nanmedian(self.raw_ratio)
        for f in ("ratio", "gate"):  # per flow step, averaged over samples (NaN where guidance did not run)
            v = getattr(self, f)
            ok = torch.isfinite(v)
            per_step = torch.where(ok, v, torch.zeros_like(v)).sum(1) / ok.sum(1).clamp_min(1)
            out[f"{f}_by_step"] = [float(x) if n else float("nan") for x, n in zip(per_step, ok.sum(1), strict=True)]
        for name, t in self.terms.items():
            for i, f in enumerate(TERM_FIELDS):
                out[f"term_{name}_{f}_mean"] = _nanmean(t[i])
        out["nonfinite"] = self.nonfinite
        out["fallback"] = self.fallback
        out["posthoc_skipped"] = self.posthoc_skipped
        return out


def _nanmean(v: torch.Tensor) -> float:
    return float(torch.nanmean(v)) if torch.isfinite(v).any() else float("nan")


def _nanmedian(v: torch.Tensor) -> float:
    r = v[torch.isfinite(v)]
    return float(r.median()) if r.numel() else float("nan")
