"""Critic features pooled from a LeRobot VLA's prefix — computed once per chunk, shared by the explicit loop
(:meth:`LeRobotFlowPolicy.encode`) and hook mode (:class:`~gaflow.policies.lerobot.hook.LeRobotGuidanceHook`), so
a critic trained on one works with the other.

Prefix layouts (LeRobot 0.6.1)::

    SmolVLA  [image tokens (64 per camera at full size)] [language tokens (n_lang)] [state token] [tail pad*]
    π0, π0.5 [image tokens (256 per camera at 224²)]      [language tokens (n_lang)]

(* only when ``prefix_length`` pads the prefix.) π0 feeds the state to the action expert as a suffix token; π0.5
writes it into the prompt: ``"Task: <task>, State: <256-bin ids>;\\nAction: "``.

Keys (``D`` = the VLM width: 960 for SmolVLA, 2048 for π0/π0.5; ``S`` = the real state dim):

* ``"task_embed"`` ``(B, D)`` — masked mean of the input embeddings ``embed_language_tokens(tokens)`` over the task
  tokens: image-independent (the same task always gives the same vector).
* ``"task"`` ``(B, D)`` — masked mean of the contextual prefix output over the task tokens (image-aware).
* ``"observation"`` ``(B, D)`` — mean of the prefix output over the (non-padded) image positions.
* ``"state"`` ``(B, S)`` — the normalised state the policy saw: SmolVLA and π0 the normalised state itself, π0.5 the
  centres of the 256 bins written into its prompt (parsed from the tokens, so hook mode gets the same values).
* ``"state_token"`` ``(B, D)`` — SmolVLA only: the prefix output at the state token (attends to images and text).

For π0.5 the "task tokens" are only the ``"Task: …"`` span (its prompt also carries the discretised state); for
SmolVLA and π0 they are all non-padded language tokens.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import torch

PI05_STATE_MARKER = ", State: "  # LeRobot's Pi05PrepareStateTokenizerProcessorStep prompt template
PI05_BINS = 256


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` ``(B, L, D)`` over positions where ``mask`` ``(B, L)`` is true (zeros where none is)."""
    m = mask.to(torch.float32).unsqueeze(-1)
    return (x.to(torch.float32) * m).sum(1) / m.sum(1).clamp_min(1.0)


@dataclass
class PrefixCapture:
    """What one prefix pass exposes; built by the adapter's ``encode`` and by the hook from LeRobot's own pass."""

    prefix_out: torch.Tensor  # (B, L, D) VLM output over the prefix
    pad_mask: torch.Tensor  # (B, L) bool, valid prefix positions
    lang_tokens: torch.Tensor  # (B, n_lang)
    lang_masks: torch.Tensor  # (B, n_lang) bool
    lang_embed: torch.Tensor  # (B, n_lang, D) embed_language_tokens(lang_tokens), unscaled
    state: torch.Tensor | None  # (B, max_state_dim) normalised padded state (SmolVLA, π0); None for π0.5


def pad_mask_from_attention(mask: torch.Tensor) -> torch.Tensor:
    """Valid prefix positions from a prefix attention mask: the diagonal of LeRobot's ``make_att_2d_masks`` is
    the pad mask. Accepts SmolVLA's boolean ``(B, L, L)`` or π0's additive float ``(B, 1, L, L)`` mask."""
    if mask.dim() == 4:
        mask = mask[:, 0]
    diag = torch.diagonal(mask, dim1=-2, dim2=-1)
    return diag if diag.dtype == torch.bool else diag == 0


def pooled_features(
    family: str, cap: PrefixCapture, *, state_dim: int, tokenizer=None
) -> dict[str, torch.Tensor]:
    """The documented feature dict (float32, detached) from one prefix capture."""
    out = cap.prefix_out.detach()
    b, length, _ = out.shape
    n_lang = cap.lang_tokens.shape[1]
    pad = cap.pad_mask.to(torch.bool)
    if family == "smolvla":
        # The state token is the last valid position (tail padding, if any, comes after it).
        last = length - 1 - pad.flip(1).to(torch.int64).argmax(1)  # (B,)
        lang_start = last - n_lang
    else:
        last = None
        lang_start = torch.full((b,), length - n_lang, dtype=torch.long, device=out.device)
    idx = lang_start.view(-1, 1) + torch.arange(n_lang, device=out.device).view(1, -1)  # (B, n_lang)
    lang_out = torch.gather(out, 1, idx.unsqueeze(-1).expand(-1, -1, out.shape[-1]))
    task_mask = cap.lang_masks.to(torch.bool)
    if family == "pi05":
        if tokenizer is None:
            raise ValueError("π0.5 features need the policy's tokenizer to find the 'Task: …' span")
        span_end, state = pi05_prompt_layout(cap.lang_tokens, task_mask, tokenizer, state_dim)
        task_mask = task_mask & (torch.arange(n_lang, device=out.device).view(1, -1) < span_end.view(-1, 1))
    else:
        if cap.state is None:
            raise ValueError(f"{family} features need the normalised state")
        state = cap.state[..., :state_dim]
    positions = torch.arange(length, device=out.device).view(1, -1)
    image_mask = pad & (positions < lang_start.view(-1, 1))
    feats = {
        "task_embed": masked_mean(cap.lang_embed.detach(), task_mask),
        "task": masked_mean(lang_out, task_mask),
        "observation": masked_mean(out, image_mask),
        "state": state.detach().to(torch.float32),
    }
    if last is not None:
        feats["state_token"] = out[torch.arange(b, device=out.device), last].to(torch.float32)
    return feats


def pi05_prompt_layout(
    tokens: torch.Tensor, masks: torch.Tensor, tokenizer, state_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For π0.5 prompts ``"Task: <task>, State: <bins>;\\nAction: "``: the number of leading tokens that belong to
    the ``"Task: …"`` span ``(B,)`` and the state's bin centres ``(B, state_dim)`` in ``[-1, 1]``.

    Works from token ids only (hook mode never sees the strings): decode, find the template's last
    ``", State: "``, and take the longest token prefix whose decoded text ends before it (binary search).
    """
    b = tokens.shape[0]
    span_end = torch.zeros(b, dtype=torch.long)
    state = torch.zeros(b, state_dim)
    for i in range(b):
        ids = tokens[i][masks[i]].tolist()
        text = tokenizer.decode(ids, skip_special_tokens=True)
        cut = text.rfind(PI05_STATE_MARKER)
        if cut < 0:
            warnings.warn("π0.5 prompt has no ', State: ' marker (truncated?); using all language tokens as task",
                          stacklevel=2)
            span_end[i] = len(ids)
            continue
        lo, hi = 0, len(ids)  # largest p with len(decode(ids[:p])) <= cut
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(tokenizer.decode(ids[:mid], skip_special_tokens=True)) <= cut:
                lo = mid
            else:
                hi = mid - 1
        span_end[i] = lo
        # np.digitize gives -1 below the range, so bins are signed integers.
        bins = [int(s) for s in re.findall(r"-?\d+", text[cut + len(PI05_STATE_MARKER):].split(";")[0])]
        if len(bins) < state_dim:
            warnings.warn(f"π0.5 prompt carries {len(bins)} state bins, expected {state_dim} (truncated at "
                          "tokenizer_max_length?); missing entries are 0", stacklevel=2)
        vals = torch.tensor(bins[:state_dim], dtype=torch.float32)
        state[i, : len(vals)] = -1.0 + (vals + 0.5) * (2.0 / PI05_BINS)
    # Keep the indices where the tokens are (masked positions are all at the right: padding_side="right").
    return span_end.to(tokens.device), state.to(tokens.device)
