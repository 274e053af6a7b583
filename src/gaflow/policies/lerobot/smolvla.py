"""SmolVLA (LeRobot ``policies/smolvla``) as a gaflow flow policy.

Mirrors ``VLAFlowMatching.sample_actions``: ``embed_prefix`` → ``vlm_with_expert.forward`` over the prefix with
``use_cache`` → a DynamicCache; each velocity is ``denoise_step(prefix_pad_masks, past_key_values, x_t, t)``,
which appends the suffix K/V and crops the cache back to the prefix, so repeated calls are safe.
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


class SmolVLAFlowPolicy(LeRobotFlowPolicy):
    family = "smolvla"

    def _num_steps(self) -> int:
        return self.config.num_steps

    @property
    def backbone(self):
        return self.model.vlm_with_expert

    def _model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        # As SmolVLAPolicy.predict_action_chunk → _get_action_chunk does.
        batch = self.policy._prepare_batch(dict(batch))  # noqa: SLF001
        images, img_masks = self.policy.prepare_images(batch)
        return dict(
            images=images, img_masks=img_masks, lang_tokens=batch[OBS_LANGUAGE_TOKENS],
            lang_masks=batch[OBS_LANGUAGE_ATTENTION_MASK], state=self.policy.prepare_state(batch),
        )

    def _prefix(self, inputs: dict[str, Any]):
        from lerobot.policies.common.vla_utils import make_att_2d_masks

        embs, pad, att = self.model.embed_prefix(
            inputs["images"], inputs["img_masks"], inputs["lang_tokens"], inputs["lang_masks"], state=inputs["state"]
        )
        (prefix_out, _), kv = self.backbone.forward(
            attention_mask=make_att_2d_masks(pad, att),
            position_ids=torch.cumsum(pad, dim=1) - 1,
            past_key_values=None,
            inputs_embeds=[embs, None],
            use_cache=self.config.use_cache,
        )
        return prefix_out, pad, kv

    def _denoise(self, context: LeRobotContext, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        kv = context.past_key_values
        v = self.model.denoise_step(context.prefix_pad_masks, kv, x_t, t)
        if torch.is_grad_enabled() and kv is not None:
            # The crop keeps a slice of cat(prefix, suffix): detach it so no graph outlives this step.
            for layer in kv.layers:
                layer.keys, layer.values = layer.keys.detach(), layer.values.detach()
        return v

    def _finish_actions(self, actions: torch.Tensor) -> torch.Tensor:
        if self.config.adapt_to_pi_aloha:
            actions = self.policy._pi_aloha_encode_actions(actions)  # noqa: SLF001
        return actions

    def _training_actions(self, actions: torch.Tensor) -> torch.Tensor:
        if self.config.adapt_to_pi_aloha:  # as SmolVLAPolicy.forward does to batch["action"]
            actions = self.policy._pi_aloha_encode_actions_inv(actions.clone())  # noqa: SLF001
        return actions
