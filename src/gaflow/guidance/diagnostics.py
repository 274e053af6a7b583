"""Per-step, per-sample guidance diagnostics, summarised lazily: the guided step only *stages* what it computed
anyway (no extra tensor op, no host sync per flow step); every field is computed for all steps at once, and copied
to the CPU once, the first time anything reads the diagnostics."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gaflow.guidance.strength import EPS

FIELDS = ("raw_grad_norm", "applied_norm", "ratio", "gate", "q_mean", "q_std", "cosine", "raw_ratio")
TERM_FIELDS = ("value", "grad_norm", "share")


@dataclass
class StagedStep:
    """What one guided flow step leaves for its diagnostics: tensors it computed anyway, held by reference (each
    is fresh — the step made it — so nothing later overwrites it)."""

    step: int
    g: torch.Tensor  # (B, H, d) the gradient the strength saw (non-finite samples already zeroed)
    ok: torch.Tensor  # (B,) bool: finite value and gradient
    v_norm: torch.Tensor | None  # (B,) ‖v‖ over the real dims, when the strength needed it (relative)
    v_real: torch.Tensor | None  # (B, H, d) otherwise: a copy of v's real dims (the policy may reuse its output)
    g_norm: torch.Tensor | None  # (B,) ‖g‖ when the strength needed it (clip, relative)
    applied: torch.Tensor | None  # (B, H, d) Δ added to the velocity (before the convention sign); None: nothing
    gate: torch.Tensor | None  # (B,) ensemble gate × trust gate; None: 1
    members: torch.Tensor | None  # (K, B) the critic term's ensemble values; None without a critic term
    std: torch.Tensor | None  # (B,) their std when the gate already computed it
    fell_back: torch.Tensor | None  # (B,) bool, fallback for disagreement; None without a fallback threshold
    term_values: dict[str, torch.Tensor]  # name → (B,) the term's own value
    term_grads: dict[str, torch.Tensor]  # name → (B, H, d) its weighted share of g


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
    Counters: ``nonfinite`` — (sample, step) pairs that fell back to unguided for a non-finite value or gradient;
    ``fallback`` — pairs that fell back for ensemble disagreement; ``posthoc_skipped``.

    The sampler and the LeRobot hook call :meth:`stage` once per guided step; ``data``, ``terms`` and the counters
    are computed from the staged steps the first time they are read (all steps in a handful of batched ops, one
    copy to the CPU), so a chunk whose diagnostics nobody reads never pays for them.
    """

    def __init__(self, data: torch.Tensor, nonfinite: int = 0, fallback: int = 0, posthoc_skipped: int = 0,
                 extra: dict | None = None, terms: dict[str, torch.Tensor] | None = None) -> None:
        self._data = data  # (len(FIELDS), num_steps, B)
        self._nonfinite, self._fallback = nonfinite, fallback
        self.posthoc_skipped = posthoc_skipped
        self.extra = {} if extra is None else extra
        self._terms = {} if terms is None else terms  # name → (len(TERM_FIELDS), num_steps, B)
        self._staged: list[StagedStep] = []

    @classmethod
    def empty(cls, num_steps: int, batch: int) -> GuidanceDiagnostics:
        with torch.inference_mode(False):  # a normal tensor: it is written in place later, in any mode
            return cls(torch.full((len(FIELDS), num_steps, batch), float("nan")))

    # ------------------------------------------------------------------ lazily summarised state
    @property
    def data(self) -> torch.Tensor:
        self._summarise()
        return self._data

    @property
    def terms(self) -> dict[str, torch.Tensor]:
        self._summarise()
        return self._terms

    @property
    def nonfinite(self) -> int:
        self._summarise()
        return self._nonfinite

    @nonfinite.setter
    def nonfinite(self, value: int) -> None:
        self._summarise()
        self._nonfinite = value

    @property
    def fallback(self) -> int:
        self._summarise()
        return self._fallback

    @fallback.setter
    def fallback(self, value: int) -> None:
        self._summarise()
        self._fallback = value

    def __getattr__(self, name: str) -> torch.Tensor:
        if name in FIELDS:
            return self.data[FIELDS.index(name)]
        raise AttributeError(name)

    def __repr__(self) -> str:
        b = self._data.shape[-1]
        return (f"GuidanceDiagnostics(num_steps={self._data.shape[1]}, batch={b}, staged={len(self._staged)}, "
                f"terms={sorted(self._terms) or sorted({n for s in self._staged for n in s.term_values})})")

    # ------------------------------------------------------------------ recording
    def stage(self, staged: StagedStep) -> None:
        """Keep one guided step's tensors for the lazy summary (no tensor op here)."""
        self._staged.append(staged)

    def record(self, step: int, values: list[torch.Tensor], terms: dict[str, list[torch.Tensor]] | None = None
               ) -> None:
        """Write one step eagerly: ``values`` one ``(B,)`` tensor per field, in ``FIELDS`` order; ``terms``: term
        name → one ``(B,)`` tensor per ``TERM_FIELDS``."""
        self._summarise()
        terms = terms or {}
        rows = torch.stack([*values, *(v for vs in terms.values() for v in vs)]).detach().to("cpu", torch.float32)
        self._data[:, step] = rows[: len(FIELDS)]
        for i, name in enumerate(terms):
            start = len(FIELDS) + i * len(TERM_FIELDS)
            self._term_rows(name)[:, step] = rows[start: start + len(TERM_FIELDS)]

    def _term_rows(self, name: str) -> torch.Tensor:
        if name not in self._terms:
            with torch.inference_mode(False):
                self._terms[name] = torch.full((len(TERM_FIELDS), *self._data.shape[1:]), float("nan"))
        return self._terms[name]

    def _summarise(self) -> None:
        """Turn the staged steps into ``data`` / ``terms`` / counters: every field for all steps at once.

        Each per-sample norm and dot product reduces the same contiguous row of the same tensor as a per-step
        computation would, so the values equal the ones an eager per-step record wrote."""
        staged, self._staged = self._staged, []
        if not staged:
            return
        nan = float("nan")
        g = torch.stack([s.g for s in staged])  # (S, B, H, d)
        ok = torch.stack([s.ok for s in staged])  # (S, B)
        g_norm = (torch.stack([s.g_norm for s in staged]) if all(s.g_norm is not None for s in staged)
                  else _row_norm(g))
        v_norm = (torch.stack([s.v_norm for s in staged]) if all(s.v_norm is not None for s in staged)
                  else _row_norm(torch.stack([s.v_real for s in staged]))).clamp_min(EPS)
        zeros = torch.zeros_like(g_norm)
        if all(s.applied is None for s in staged):  # the zero control: nothing applied, no direction
            applied_norm, cos = zeros, torch.full_like(g_norm, nan)
        else:
            applied = torch.stack([torch.zeros_like(s.g) if s.applied is None else s.applied for s in staged])
            applied_norm = _row_norm(applied)
            cos = (g * applied).flatten(2).sum(2) / (g_norm * applied_norm).clamp_min(EPS)
            cos = torch.where(applied_norm > 0, cos, nan)
        gate = torch.stack([torch.ones_like(s.ok, dtype=g.dtype) if s.gate is None else s.gate for s in staged])
        if staged[0].members is None:
            q_mean = q_std = torch.full_like(g_norm, nan)
        else:
            members = torch.stack([s.members for s in staged])  # (S, K, B)
            q_mean = members.mean(1)
            if all(s.std is not None for s in staged):
                q_std = torch.stack([s.std for s in staged])
            else:
                q_std = members.std(1, unbiased=False) if members.shape[1] > 1 else zeros
        fields = torch.stack([g_norm, applied_norm, applied_norm / v_norm, gate, q_mean, q_std, cos, g_norm / v_norm])
        rows = [fields]
        names = list(staged[0].term_values)
        for name in names:
            share = torch.stack([s.term_grads[name] for s in staged])
            # its share of the applied guidance: ⟨w·∇term, g⟩ / ‖g‖² (the terms' shares sum to 1)
            fraction = (share * g).flatten(2).sum(2) / (g_norm * g_norm).clamp_min(EPS)
            rows.append(torch.stack([torch.stack([s.term_values[name] for s in staged]), _row_norm(share),
                                     fraction]))
        counts = [(~ok).sum()]
        if any(s.fell_back is not None for s in staged):
            fell = torch.stack([torch.zeros_like(s.ok) if s.fell_back is None else s.fell_back for s in staged])
            counts.append((fell & ok).sum())
        # one copy to the CPU (one device sync) for the whole chunk
        out = torch.cat([r.reshape(-1) for r in rows] + [c.reshape(1).to(rows[0].dtype) for c in counts])
        out = out.detach().to("cpu", torch.float32)
        steps = torch.tensor([s.step for s in staged])
        n_field = fields.numel()
        self._data[:, steps] = out[:n_field].view(fields.shape)
        offset = n_field
        for name in names:
            size = len(TERM_FIELDS) * fields.shape[1] * fields.shape[2]
            self._term_rows(name)[:, steps] = out[offset: offset + size].view(len(TERM_FIELDS), *fields.shape[1:])
            offset += size
        self._nonfinite += int(out[offset])
        if len(counts) > 1:
            self._fallback += int(out[offset + 1])

    # ------------------------------------------------------------------ reading
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


def _row_norm(x: torch.Tensor) -> torch.Tensor:
    """``(S, B, ...) -> (S, B)``: the per-sample L2 norm of every staged step at once (each row is reduced exactly
    as :func:`~gaflow.guidance.strength.per_sample_norm` reduces it in one step)."""
    return torch.linalg.vector_norm(x.flatten(2), dim=2)


def _nanmean(v: torch.Tensor) -> float:
    return float(torch.nanmean(v)) if torch.isfinite(v).any() else float("nan")


def _nanmedian(v: torch.Tensor) -> float:
    r = v[torch.isfinite(v)]
    return float(r.median()) if r.numel() else float("nan")
