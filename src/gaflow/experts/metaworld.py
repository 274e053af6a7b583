"""MetaWorld's own scripted expert (``metaworld.policies.ENV_POLICY_MAP``) for a :class:`MetaWorldEnv`.

>>> env = MetaWorldEnv("reach", render=False)             # doctest: +SKIP
>>> expert = MetaWorldExpert(env)                         # doctest: +SKIP
>>> obs = env.reset(seed=0)                               # doctest: +SKIP
>>> obs, success, done, info = env.step(expert.act(obs))  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from gaflow.envs.metaworld import MetaWorldEnv
from gaflow.observations import ENV_STATE_KEY


class MetaWorldExpert:
    """The scripted policy of ``env``'s task. ``act(obs)`` is its action (4-d, unclipped) at ``obs``.

    For the env's latest observation (the default) the policy reads the float64 state the simulator produced, so
    scripted rollouts are exactly reproducible; for any other observation it reads its float32
    ``observation.environment_state``.
    """

    def __init__(self, env: MetaWorldEnv) -> None:
        from metaworld.policies import ENV_POLICY_MAP

        self.env = env
        self.policy = ENV_POLICY_MAP[env.env_name]()

    def act(self, obs: dict[str, Any] | None = None) -> np.ndarray:
        if obs is None or obs is self.env.last_observation:
            raw = self.env.raw_observation
        else:
            raw = np.asarray(obs[ENV_STATE_KEY], dtype=np.float64)
        # Scripted policies warn "Constant(s) may be too high" on almost every step.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", category=UserWarning)
            return np.asarray(self.policy.get_action(raw), dtype=np.float32)


__all__ = ["MetaWorldExpert"]
