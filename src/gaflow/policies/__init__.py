"""Base flow policies behind one protocol (see :mod:`gaflow.policies.base`)."""

from gaflow.policies.base import (
    FlowPolicy,
    PolicySpec,
    TimeConvention,
    expand_context,
)
from gaflow.policies.callable import CallablePolicy, ConventionFlip
from gaflow.policies.gaussian import GaussianFlowPolicy

__all__ = [
    "CallablePolicy",
    "ConventionFlip",
    "FlowPolicy",
    "GaussianFlowPolicy",
    "PolicySpec",
    "TimeConvention",
    "expand_context",
]
