"""Base flow policies behind one protocol (see :mod:`gaflow.policies.base`)."""

from gaflow.policies.base import (
    FlowPolicy,
    PolicySpec,
    TimeConvention,
    expand_context,
)
from gaflow.policies.callable import CallablePolicy, ConventionFlip
from gaflow.policies.gaussian import GaussianFlowPolicy
from gaflow.policies.registry import load_policy

__all__ = [
    "CallablePolicy",
    "ConventionFlip",
    "FlowPolicy",
    "GaussianFlowPolicy",
    "PolicySpec",
    "TimeConvention",
    "expand_context",
    "load_policy",
]
