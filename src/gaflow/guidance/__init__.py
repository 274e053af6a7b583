"""Guidance as small composable pieces: objective terms and their weighted sum, estimators, strength and schedule,
uncertainty gate, controls, diagnostics — composed by :class:`Guidance` from one :class:`GuidanceConfig`.

Built-in objective terms (registered on import): ``critic``; ``smoothness``, ``effort``, ``speed``
(:mod:`.terms_motion`); ``keep_out``, ``bounds`` (:mod:`.terms_space`, also hard constraints via
:mod:`.constraints`); named presets of them in :mod:`.presets`."""

from gaflow.guidance import terms_motion, terms_space  # noqa: F401  (registers their terms)
from gaflow.guidance.config import Guidance, GuidanceConfig
from gaflow.guidance.constraints import Constraints
from gaflow.guidance.controls import Control
from gaflow.guidance.critic_term import CriticTerm, CriticValue
from gaflow.guidance.diagnostics import GuidanceDiagnostics
from gaflow.guidance.estimators import ESTIMATORS, FlowStep, estimate, posthoc_ascent
from gaflow.guidance.objective import CriticObjective, Objective, ObjectiveValue, WeightedTerm
from gaflow.guidance.presets import PRESETS, preset_guidance
from gaflow.guidance.strength import Schedule, Strength, per_sample_norm, project_trust_region
from gaflow.guidance.terms import TERMS, ObjectiveTerm, TermInputs, register_term
from gaflow.guidance.uncertainty import Gate

__all__ = [
    "ESTIMATORS",
    "PRESETS",
    "TERMS",
    "Constraints",
    "Control",
    "CriticObjective",
    "CriticTerm",
    "CriticValue",
    "FlowStep",
    "Gate",
    "Guidance",
    "GuidanceConfig",
    "GuidanceDiagnostics",
    "Objective",
    "ObjectiveTerm",
    "ObjectiveValue",
    "Schedule",
    "Strength",
    "TermInputs",
    "WeightedTerm",
    "estimate",
    "per_sample_norm",
    "posthoc_ascent",
    "preset_guidance",
    "project_trust_region",
    "register_term",
]
