"""Guidance as small composable pieces: objective (ensemble aggregation), estimators, strength and schedule,
uncertainty gate, controls, diagnostics — composed by :class:`Guidance` from one :class:`GuidanceConfig`."""

from gaflow.guidance.config import Guidance, GuidanceConfig
from gaflow.guidance.controls import Control
from gaflow.guidance.diagnostics import GuidanceDiagnostics
from gaflow.guidance.estimators import ESTIMATORS, FlowStep, estimate, posthoc_ascent
from gaflow.guidance.objective import CriticObjective, CriticValue
from gaflow.guidance.strength import Schedule, Strength, per_sample_norm, project_trust_region
from gaflow.guidance.uncertainty import Gate

__all__ = [
    "ESTIMATORS",
    "Control",
    "CriticObjective",
    "CriticValue",
    "FlowStep",
    "Gate",
    "Guidance",
    "GuidanceConfig",
    "GuidanceDiagnostics",
    "Schedule",
    "Strength",
    "estimate",
    "per_sample_norm",
    "posthoc_ascent",
    "project_trust_region",
]
