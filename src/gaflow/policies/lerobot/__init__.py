"""LeRobot SmolVLA, π0 and π0.5 as frozen gaflow base policies.

* :func:`load_lerobot_policy` — ``"lerobot:<hub id or local dir>"`` → a :class:`LeRobotFlowPolicy`
  (explicit-loop mode: ``gaflow.sampler.sample_chunks`` drives ``encode`` / ``velocity``).
* hook mode (guidance installed as ``policy.model.rtc_processor`` so LeRobot's own ``predict_action_chunk`` runs
  guided) lives in the runtime layer: :class:`gaflow.runtime.LeRobotGuidanceHook`.
* :mod:`.features` — the critic features pooled from the prefix. Offline random-weight models for tests live in
  :mod:`gaflow.testing.lerobot_tiny` (a fixture; its checkpoints load through a hook it registers).

LeRobot is imported lazily (it takes tens of seconds); importing this package is cheap.
"""

from gaflow.policies.lerobot.adapter import LeRobotContext, LeRobotFlowPolicy
from gaflow.policies.lerobot.offline import (
    CheckpointError,
    LoadPlan,
    load_lerobot_policy,
    register_load_hook,
    wrap_lerobot_policy,
)
from gaflow.policies.lerobot.pi0 import PI0FlowPolicy
from gaflow.policies.lerobot.pi05 import PI05FlowPolicy
from gaflow.policies.lerobot.smolvla import SmolVLAFlowPolicy

__all__ = [
    "CheckpointError",
    "LeRobotContext",
    "LeRobotFlowPolicy",
    "LoadPlan",
    "PI0FlowPolicy",
    "PI05FlowPolicy",
    "SmolVLAFlowPolicy",
    "load_lerobot_policy",
    "register_load_hook",
    "wrap_lerobot_policy",
]
