"""The built-in compact flow "VLA" (small CNN + frozen MiniLM text encoder + proprio → MLP action expert).

See ``docs/compact_policy.md``; train with ``gaflow train-policy``, load with
:meth:`CompactFlowPolicy.from_pretrained`.
"""

from gaflow.normalize import Normalizer, compute_stats
from gaflow.policies.compact.config import CompactPolicyConfig
from gaflow.policies.compact.modeling import CheckpointError, CompactFlowPolicy

__all__ = ["CheckpointError", "CompactFlowPolicy", "CompactPolicyConfig", "Normalizer", "compute_stats"]
