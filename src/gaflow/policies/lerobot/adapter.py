"""A frozen LeRobot flow policy (SmolVLA, π0, π0.5) behind gaflow's :class:`~gaflow.protocol.FlowPolicy`.

* ``encode(obs)`` runs the policy's own preprocessor (normalisation, tokenisation), prepares images/state the way
  ``predict_action_chunk`` does, and builds the prefix KV cache **once per chunk**; it also pools the critic
  features from that prefix (:mod:`gaflow.policies.lerobot.features`).
* ``velocity(context, x_t, t)`` is one ``denoise_step`` on the cached prefix, in LeRobot's time convention
  (``x_t = t·ε + (1−t)·A``, ``t: 1 → 0``), on normalised actions padded to ``max_action_dim`` (32). Only the first
  ``action_dim`` entries are real; gaflow's sampler guides only those.
* ``decode_actions(chunk)`` crops to the real dims and runs the policy's postprocessor (unnormalise). For π0/π0.5
  with relative actions the postprocessor uses the state of the *last* preprocessed batch, so decode right after
  sampling from that batch's context.

With guidance off, ``gaflow.sampler.sample_chunks(adapter, context=adapter.encode(obs), noise=noise)`` reproduces
``policy.predict_action_chunk(preprocessor(obs), noise=noise)`` (tests/test_lerobot_adapters.py).

The base policy is frozen: the adapter puts it in eval mode and turns off ``requires_grad`` on its parameters, so
an unguided velocity builds no autograd graph even outside ``no_grad``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from gaflow.policies.lerobot.features import PrefixCapture, pooled_features
from gaflow.protocol import PolicySpec, TimeConvention

ACTION = "action"
OBS_STATE = "observation.state"
OBS_LANGUAGE_TOKENS = "observation.language.tokens"
OBS_LANGUAGE_ATTENTION_MASK = "observation.language.attention_mask"


@dataclass
class LeRobotContext:
    """One chunk's encoded observation batch (``B`` rows; ``B·N`` after :meth:`expand_context`)."""

    prefix_pad_masks: torch.Tensor  # (B, L) bool
    past_key_values: Any  # transformers DynamicCache over the prefix
    features: dict[str, torch.Tensor]  # (B, F) each, see features.py
    state: torch.Tensor | None = None  # (B, max_state_dim) π0 only: its state is a suffix token
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.prefix_pad_masks.shape[0]


def repeat_cache(cache, n: int):
    """A new DynamicCache with every layer's keys/values repeated ``n`` times per row (repeat_interleave)."""
    from transformers import DynamicCache

    return DynamicCache(
        tuple((k.repeat_interleave(n, dim=0), v.repeat_interleave(n, dim=0), sw) for k, v, sw in cache)
    )


class LeRobotFlowPolicy:
    """Common adapter; :class:`SmolVLAFlowPolicy`, :class:`PI0FlowPolicy` and :class:`PI05FlowPolicy` fill in the
    family-specific prefix and denoise calls."""

    family: str = ""

    def __init__(self, policy, preprocessor, postprocessor, tokenizer=None) -> None:
        self.policy, self.preprocessor, self.postprocessor = policy, preprocessor, postprocessor
        self.model = policy.model
        self.config = policy.config
        policy.eval()
        policy.requires_grad_(False)
        self.tokenizer = tokenizer if tokenizer is not None else _pipeline_tokenizer(preprocessor)
        self.action_dim = int(self.config.output_features[ACTION].shape[0])
        state_feat = self.config.input_features.get(OBS_STATE)
        self.state_dim = int(state_feat.shape[0]) if state_feat is not None else 0
        self.spec = PolicySpec(
            chunk_len=int(self.config.chunk_size),
            action_dim=self.action_dim,
            padded_dim=int(self.config.max_action_dim),
            convention=TimeConvention.LEROBOT,
            num_steps=int(self._num_steps()),
        )

    # ------------------------------------------------------------------ family hooks
    def _num_steps(self) -> int:
        return self.config.num_inference_steps

    @property
    def backbone(self):
        """The VLM+expert module whose ``forward`` builds the prefix cache and runs the expert."""
        return self.model.paligemma_with_expert

    def _model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _prefix(self, inputs: dict[str, Any]):
        """Return ``(prefix_out (B, L, D), prefix_pad_masks (B, L), past_key_values)``."""
        raise NotImplementedError

    def _denoise(self, context: LeRobotContext, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _finish_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Family-specific edits LeRobot applies to cropped actions before the postprocessor."""
        return actions

    def _training_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Family-specific edits LeRobot's ``forward`` applies to preprocessed action targets (the inverse of
        :meth:`_finish_actions`)."""
        return actions

    # ------------------------------------------------------------------ protocol
    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    def preprocess(self, obs: dict[str, Any]) -> dict[str, Any]:
        """The policy's own preprocessor (rename, batch, tokenise, to device, normalise)."""
        return self.preprocessor(dict(obs))

    def encode(self, obs: dict[str, Any]) -> LeRobotContext:
        """Preprocess a raw observation batch and build the prefix once (see :meth:`encode_processed`)."""
        return self.encode_processed(self.preprocess(obs))

    def encode_processed(self, batch: dict[str, Any]) -> LeRobotContext:
        """Prefix KV cache and critic features for an already-preprocessed batch (what ``predict_action_chunk``
        receives)."""
        # Normal (not inference) tensors even under a caller's inference_mode, so estimators that differentiate
        # through the velocity (clean_jacobian, bptt) can use this prefix.
        with torch.inference_mode(False), torch.no_grad():
            inputs = self._model_inputs(batch)
            prefix_out, pad, kv = self._prefix(inputs)
            cap = PrefixCapture(
                prefix_out=prefix_out, pad_mask=pad, lang_tokens=inputs["lang_tokens"],
                lang_masks=inputs["lang_masks"], lang_embed=self.backbone.embed_language_tokens(inputs["lang_tokens"]),
                state=inputs.get("state"),
            )
            feats = self.features_from_capture(cap)
        return LeRobotContext(prefix_pad_masks=pad, past_key_values=kv, features=feats,
                              state=inputs.get("state") if self.family == "pi0" else None)

    def features_from_capture(self, cap: PrefixCapture) -> dict[str, torch.Tensor]:
        return pooled_features(self.family, cap, state_dim=self.state_dim, tokenizer=self.tokenizer)

    def velocity(self, context: LeRobotContext, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # Build a graph only when the caller differentiates through x_t (clean_jacobian, bptt).
        with torch.set_grad_enabled(torch.is_grad_enabled() and x_t.requires_grad):
            return self._denoise(context, x_t, t.to(device=x_t.device, dtype=torch.float32))

    def critic_features(self, context: LeRobotContext) -> dict[str, torch.Tensor]:
        return context.features

    def decode_actions(self, chunk: torch.Tensor) -> torch.Tensor:
        actions = self._finish_actions(chunk[..., : self.action_dim].detach().clone())
        return self.postprocessor(actions)

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`decode_actions`: recorded actions ``(B, H, action_dim)`` → the normalised chunk
        LeRobot trains the policy on, through the preprocessor's own action steps in order (relative to the state
        of the last preprocessed batch when the policy uses relative actions, then normalised) and the family's
        edits to training targets (SmolVLA's ``adapt_to_pi_aloha``)."""
        from lerobot.processor import (
            NormalizerProcessorStep,
            RelativeActionsProcessorStep,
            TransitionKey,
            create_transition,
        )

        x = torch.as_tensor(actions, dtype=torch.float32)
        if x.dim() != 3 or x.shape[-1] != self.action_dim:
            raise ValueError(f"actions must be (B, H, {self.action_dim}); got {tuple(x.shape)}")
        x = x.to(self.device)
        for step in getattr(self.preprocessor, "steps", []):
            if isinstance(step, RelativeActionsProcessorStep) and step.enabled:
                state = step.get_cached_state()
                if state is None:
                    raise ValueError("this policy uses relative actions: encode the observations before "
                                     "normalize_actions (their state is the reference)")
                x = step(create_transition(observation={OBS_STATE: state}, action=x))[TransitionKey.ACTION]
            elif isinstance(step, NormalizerProcessorStep):
                x = step(create_transition(action=x))[TransitionKey.ACTION]
        return self._training_actions(x)

    def expand_context(self, context: LeRobotContext, n: int) -> LeRobotContext:
        if n == 1:
            return context
        rep = (lambda x: None if x is None else x.repeat_interleave(n, dim=0))  # noqa: E731
        return replace(
            context,
            prefix_pad_masks=rep(context.prefix_pad_masks),
            past_key_values=repeat_cache(context.past_key_values, n),
            features={k: rep(v) for k, v in context.features.items()},
            state=rep(context.state),
        )

    # ------------------------------------------------------------------ LeRobot's own path
    def lerobot_chunk(self, obs: dict[str, Any], noise: torch.Tensor | None = None) -> torch.Tensor:
        """LeRobot's ``predict_action_chunk`` on a raw observation: normalised actions ``(B, H, action_dim)``."""
        return self.policy.predict_action_chunk(self.preprocess(obs), noise=noise)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec})"


def _pipeline_tokenizer(preprocessor):
    for step in getattr(preprocessor, "steps", []):
        tok = getattr(step, "input_tokenizer", None)
        if tok is not None:
            return tok
    return None

