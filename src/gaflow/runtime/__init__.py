"""The runtime layer: one guided-inference object (:class:`GuidedRuntime`), the one rollout loop
(:func:`run_episode`), the executor seam (:mod:`.executor`) and LeRobot hook mode (:class:`LeRobotGuidanceHook`).

Everything that executes a policy — collection, evaluation, sweeps, ``eval-policy``, the critic report's strength
check, a policy server — builds a :class:`GuidedRuntime` (directly or from a :class:`RuntimeSpec`) and calls
``infer``; nothing else assembles policy, critic, guidance and sampler for execution.
"""

from gaflow.runtime.episode import ChunkRecord, EpisodeRecord, RecordingEnv, run_episode
from gaflow.runtime.inference import GuidedRuntime, Inference, RuntimeSpec, episode_noise_seed, needs_critic

__all__ = [
    "ChunkRecord",
    "EpisodeRecord",
    "GuidedRuntime",
    "Inference",
    "LeRobotGuidanceHook",
    "RecordingEnv",
    "RuntimeSpec",
    "episode_noise_seed",
    "needs_critic",
    "run_episode",
]


def __getattr__(name: str):
    if name == "LeRobotGuidanceHook":  # imported lazily: it is only needed with LeRobot policies
        from gaflow.runtime.lerobot_hook import LeRobotGuidanceHook

        return LeRobotGuidanceHook
    raise AttributeError(name)
