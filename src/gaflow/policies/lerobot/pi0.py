"""π0 (LeRobot ``policies/pi0``) as a gaflow flow policy.

Mirrors ``PI0Pytorch.sample_actions``: ``embed_prefix`` (images + language) → PaliGemma over the prefix with a
4-D additive mask and ``use_cache=True``; each velocity is ``denoise_step(state, prefix_pad_masks, past_key_values,
x_t, t)`` — the state is a suffix token and LeRobot clones the cache inside every step.
"""

from __future__ import annotations

from typing import Any

import torch

from gaflow.policies.lerobot.adapter import (
    OBS_LANGUAGE_ATTENTION_MASK,
    OBS_LANGUAGE_TOKENS,
    LeRobotContext,
    LeRobotFlowPolicy,
)


class PI0FlowPolicy(LeRobotFlowPolicy):
    family = "pi0"

    def _model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        images, img_masks = self.policy._preprocess_images(batch)  # noqa: SLF001
        return dict(
            images=images, img_masks=img_masks, lang_tokens=batch[OBS_LANGUAGE_TOKENS],
            lang_masks=batch[OBS_LANGUAGE_ATTENTION_MASK], state=self._state(batch),
        )

    def _state(self, batch: dict[str, Any]) -> torch.Tensor | None:
        return self.policy.prepare_state(batch)

    def _prefix(self, inputs: dict[str, Any]):
        from lerobot.policies.common.vla_utils import make_att_2d_masks, prepare_attention_masks_4d

        embs, pad, att = self.model.embed_prefix(
            inputs["images"], inputs["img_masks"], inputs["lang_tokens"], inputs["lang_masks"]
        )
        lm = self.backbone.paligemma.model.language_model
        lm.config._attn_implementation = "eager"  # noqa: SLF001  (as sample_actions does)
        (prefix_out, _), kv = self.backbone.forward(
            attention_mask=prepare_attention_masks_4d(make_att_2d_masks(pad, att)),
            position_ids=torch.cumsum(pad, dim=1) - 1,
            past_key_values=None,
            inputs_embeds=[embs, None],
            use_cache=True,
        )
        return prefix_out, pad, kv

    def _denoise(self, context: LeRobotContext, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model.denoise_step(
            state=context.state, prefix_pad_masks=context.prefix_pad_masks,
            past_key_values=context.past_key_values, x_t=x_t, timestep=t,
        )
