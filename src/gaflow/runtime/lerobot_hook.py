"""Hook mode: gaflow guidance inside LeRobot's own sampler, without editing LeRobot.

LeRobot's shared Euler loop (``policies/common/flow_matching.py::euler_integrate``) routes every velocity through
``rtc_processor.denoise_step(x_t=…, time=<float>, original_denoise_step_partial=…, …)`` when
``config.rtc_config.enabled``. :class:`LeRobotGuidanceHook` is such a processor: it calls the original denoise step
(LeRobot's velocity on its own cached prefix) and returns :meth:`gaflow.guidance.Guidance.guided_velocity` of it,
built from a :class:`~gaflow.guidance.FlowStep` — the same estimator, strength, schedule, gate, controls and
diagnostics as the explicit loop; there is no second implementation here.

>>> hook = LeRobotGuidanceHook(adapter, Guidance(critic, GuidanceConfig(scale=0.5)))  # doctest: +SKIP
>>> with hook:                                                                         # doctest: +SKIP
...     actions = adapter.policy.predict_action_chunk(adapter.preprocess(obs))
>>> hook.diagnostics.summary(), hook.features["task"].shape                     # doctest: +SKIP

**How the critic features reach the hook.** The RTC interface passes only ``x_t``, the time and a closure, so
:meth:`attach` also wraps two callables *on the instances* (restored by :meth:`detach`): ``policy.model.sample_actions``
(records the language tokens/masks, the normalised state and ``num_steps``, and marks the start of a chunk) and the
VLM+expert module's ``forward`` (records the prefix output and attention mask of the prefix pass). At the first
``denoise_step`` of each chunk the hook pools the features from that prefix with the adapter's own
:func:`~gaflow.policies.lerobot.features.pooled_features`, so they equal the explicit loop's features for the
same batch; no extra VLM pass is run. The last chunk's features and per-step diagnostics stay on the hook.

LeRobot runs this under ``no_grad`` (servers under ``inference_mode``); the critic's gradient is taken in a narrow
scope with autograd re-enabled (:mod:`gaflow.guidance.autograd`, shared with the sampler), on a leaf the estimator
makes from the real dims of LeRobot's ``x_t`` — LeRobot's tensors are read as they are, never copied. Use
``predict_action_chunk`` (``select_action`` refuses RTC). Hook mode guides velocities only: estimators that
differentiate through the policy (``clean_jacobian``, ``bptt``), the trust region, post-hoc ascent and best-of-N
need the explicit loop (:func:`gaflow.sampler.sample_chunks`). Attaching replaces any RTC processor the policy had.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from gaflow.convention import time_grid
from gaflow.guidance.autograd import autograd_enabled, normal_tensors
from gaflow.guidance.config import Guidance
from gaflow.guidance.diagnostics import GuidanceDiagnostics
from gaflow.guidance.estimators import FlowStep
from gaflow.policies.lerobot.features import PrefixCapture, pad_mask_from_attention
from gaflow.protocol import TimeConvention

_MISSING = object()
HOOK_ESTIMATORS = ("noisy_point", "clean_estimate", "none")


class LeRobotGuidanceHook:
    """Guidance installable as ``policy.model.rtc_processor`` (see the module docstring)."""

    def __init__(self, adapter, guidance: Guidance) -> None:
        cfg = guidance.config
        if cfg.estimator not in HOOK_ESTIMATORS:
            raise ValueError(
                f"GuidanceConfig.estimator={cfg.estimator!r} differentiates through the policy; hook mode supports "
                f"{', '.join(HOOK_ESTIMATORS)} — use gaflow.sampler.sample_chunks for it"
            )
        if cfg.trust_region is not None or cfg.posthoc_steps:
            raise ValueError(
                "GuidanceConfig.trust_region / posthoc_steps act on whole chunks; hook mode guides velocities "
                "only — use gaflow.sampler.sample_chunks"
            )
        critic_dims = getattr(guidance.critic, "action_dim", None)
        if critic_dims is not None and critic_dims != adapter.spec.action_dim:
            raise ValueError(f"the critic scores chunks with action_dim {critic_dims}, but the policy's real action "
                             f"dim is {adapter.spec.action_dim}: train the critic on this policy's rollouts")
        self.adapter, self.guidance = adapter, guidance
        self.features: dict[str, torch.Tensor] | None = None  # (B, F) of the last chunk
        self.diagnostics: GuidanceDiagnostics | None = None  # (num_steps, B) of the last chunk
        self.chunks = 0  # chunks guided since attach
        self._saved: dict[str, Any] | None = None
        self._chunk: dict[str, Any] | None = None

    # ------------------------------------------------------------------ install / remove
    def attach(self) -> LeRobotGuidanceHook:
        """Enable RTC routing with this hook as the processor and install the prefix probes."""
        from lerobot.policies.rtc.configuration_rtc import RTCConfig

        if self._saved is not None:
            return self
        policy, model, backbone = self.adapter.policy, self.adapter.model, self.adapter.backbone
        self._saved = {
            "rtc_config": policy.config.rtc_config,
            "model_rtc": model.rtc_processor,
            "policy_rtc": getattr(policy, "rtc_processor", _MISSING),
            "sample_actions": model.__dict__.get("sample_actions", _MISSING),
            "forward": backbone.__dict__.get("forward", _MISSING),
        }
        policy.config.rtc_config = RTCConfig(enabled=True)
        model.rtc_processor = self
        if self._saved["policy_rtc"] is not _MISSING:
            policy.rtc_processor = self

        orig_sample, orig_forward = model.sample_actions, backbone.forward
        signature = inspect.signature(orig_sample)

        def sample_actions(*args, **kwargs):
            self._start_chunk(signature.bind(*args, **kwargs).arguments)
            try:
                return orig_sample(*args, **kwargs)
            finally:
                self._chunk = None

        def forward(*args, **kwargs):
            out = orig_forward(*args, **kwargs)
            embeds = kwargs.get("inputs_embeds")
            chunk = self._chunk
            if chunk is not None and chunk["prefix"] is None and embeds is not None and embeds[1] is None:
                chunk["prefix"] = (out[0][0], kwargs["attention_mask"])  # (B, L, D), prefix attention mask
            return out

        model.sample_actions, backbone.forward = sample_actions, forward
        return self

    def detach(self) -> None:
        """Restore the policy exactly as it was before :meth:`attach`."""
        if self._saved is None:
            return
        policy, model, backbone = self.adapter.policy, self.adapter.model, self.adapter.backbone
        s, self._saved = self._saved, None
        policy.config.rtc_config = s["rtc_config"]
        model.rtc_processor = s["model_rtc"]
        if s["policy_rtc"] is not _MISSING:
            policy.rtc_processor = s["policy_rtc"]
        for obj, name in ((model, "sample_actions"), (backbone, "forward")):
            if s[name] is _MISSING:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, s[name])

    def __enter__(self) -> LeRobotGuidanceHook:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    # ------------------------------------------------------------------ RTCProcessor interface
    def denoise_step(
        self,
        x_t: torch.Tensor,
        prev_chunk_left_over: torch.Tensor | None = None,
        inference_delay: int | None = None,
        time: float | torch.Tensor = 1.0,
        original_denoise_step_partial=None,
        execution_horizon: int | None = None,
    ) -> torch.Tensor:
        chunk = self._chunk
        if chunk is None:
            raise RuntimeError(
                "LeRobotGuidanceHook.denoise_step was called outside policy.model.sample_actions; attach the hook "
                "and call predict_action_chunk"
            )
        k, n = chunk["step"], chunk["num_steps"]
        chunk["step"] += 1
        if k == 0:
            self._start_guidance(x_t)
        v = original_denoise_step_partial(x_t)
        g = self.guidance
        w = g.weight(k, n) if g.active and k < n else 0.0
        if w == 0.0:
            return v
        t = torch.full((x_t.shape[0],), float(time), dtype=torch.float32, device=x_t.device)
        with autograd_enabled():
            # x_t and v are only read (the estimator builds its own leaf from the real dims): no copies
            step = FlowStep(
                x=x_t, t=t, step=k, grid=chunk["grid"], convention=TimeConvention.LEROBOT,
                action_dim=self.adapter.spec.action_dim, velocity_fn=original_denoise_step_partial, velocity=v,
            )
            return g.guided_velocity(step, chunk["objective"], w, self.diagnostics)

    def is_debug_enabled(self) -> bool:
        return False

    def track(self, **kwargs) -> None:
        pass

    # ------------------------------------------------------------------ internals
    def _start_chunk(self, args: dict[str, Any]) -> None:
        n = args.get("num_steps") or self.adapter._num_steps()  # noqa: SLF001  (live config value)
        self._chunk = {
            "lang_tokens": args.get("lang_tokens", args.get("tokens")),
            "lang_masks": args.get("lang_masks", args.get("masks")),
            "state": args.get("state"),
            "num_steps": int(n),
            "grid": time_grid(TimeConvention.LEROBOT, int(n)),
            "step": 0,
            "prefix": None,
            "objective": None,
        }

    def _start_guidance(self, x_t: torch.Tensor) -> None:
        """Pool the critic features from the prefix LeRobot just built and set up this chunk's objective."""
        chunk = self._chunk
        if chunk["prefix"] is None:
            raise RuntimeError("the hook saw no prefix pass; is it attached to this policy's model?")
        prefix_out, attention = chunk["prefix"]
        with torch.no_grad():
            cap = PrefixCapture(
                prefix_out=prefix_out, pad_mask=pad_mask_from_attention(attention),
                lang_tokens=chunk["lang_tokens"], lang_masks=chunk["lang_masks"],
                lang_embed=self.adapter.backbone.embed_language_tokens(chunk["lang_tokens"]),
                state=chunk["state"],
            )
            self.features = self.adapter.features_from_capture(cap)
        with autograd_enabled():  # buffers and features must be normal tensors, not inference tensors
            chunk["objective"] = self.guidance.objective({k: normal_tensors(v) for k, v in self.features.items()})
            self.diagnostics = GuidanceDiagnostics.empty(chunk["num_steps"], x_t.shape[0])
        chunk["prefix"] = None  # free the prefix output; the features are all we need
        self.chunks += 1
