"""Base flow policies behind one protocol (see :mod:`gaflow.protocol`)."""

from gaflow.policies.callable import CallablePolicy, ConventionFlip
from gaflow.policies.gaussian import GaussianFlowPolicy
from gaflow.policies.registry import load_policy
from gaflow.protocol import (
    FlowPolicy,
    PolicySpec,
    TimeConvention,
    expand_context,
)

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
