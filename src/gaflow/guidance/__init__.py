"""Guidance as small composable pieces: objective terms and their weighted sum, estimators, strength and schedule,
uncertainty gate, controls, diagnostics — composed by :class:`Guidance` from one :class:`GuidanceConfig`."""

from gaflow.guidance.config import Guidance, GuidanceConfig
from gaflow.guidance.controls import Control
from gaflow.guidance.critic_term import CriticTerm, CriticValue
from gaflow.guidance.diagnostics import GuidanceDiagnostics
from gaflow.guidance.estimators import ESTIMATORS, FlowStep, estimate, posthoc_ascent
from gaflow.guidance.objective import CriticObjective, Objective, ObjectiveValue, WeightedTerm
from gaflow.guidance.strength import Schedule, Strength, per_sample_norm, project_trust_region
from gaflow.guidance.terms import TERMS, ObjectiveTerm, TermInputs, register_term
from gaflow.guidance.uncertainty import Gate

__all__ = [
    "ESTIMATORS",
    "TERMS",
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
    "project_trust_region",
    "register_term",
]
