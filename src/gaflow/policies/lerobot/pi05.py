"""π0.5 (LeRobot ``policies/pi05``) as a gaflow flow policy.

Like π0 but the time enters the expert through adaRMS and there is no state argument: the preprocessor
discretises the normalised state into 256 bins and writes it into the prompt
(``"Task: <task>, State: <bins>;\\nAction: "``). Its task features therefore pool only the ``"Task: …"`` span
(:func:`gaflow.policies.lerobot.features.pi05_prompt_layout`).
"""

from __future__ import annotations

from typing import Any

import torch

from gaflow.policies.lerobot.adapter import LeRobotContext
from gaflow.policies.lerobot.pi0 import PI0FlowPolicy


class PI05FlowPolicy(PI0FlowPolicy):
    family = "pi05"

    def _state(self, batch: dict[str, Any]) -> torch.Tensor | None:
        return None

    def _denoise(self, context: LeRobotContext, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model.denoise_step(
            prefix_pad_masks=context.prefix_pad_masks, past_key_values=context.past_key_values, x_t=x_t, timestep=t
        )
