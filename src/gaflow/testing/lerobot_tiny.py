"""LeRobot SmolVLA / π0 / π0.5 built offline with random weights, for tests and latency benchmarks (a fixture, not
library code: nothing in :mod:`gaflow.policies` imports it).

Nothing here touches the Hugging Face hub (run with ``HF_HUB_OFFLINE=1``):

* **SmolVLA** always calls ``AutoConfig.from_pretrained`` / ``AutoProcessor.from_pretrained(vlm_model_name)``; we
  write a small local folder (a ``SmolVLMConfig`` with a Llama text config and a vision config, a
  ``SmolVLMProcessor`` and a byte-level tokenizer carrying SmolVLM's special tokens) and point ``vlm_model_name``
  at it with ``load_vlm_weights=False``. ``size="full"`` uses SmolVLM2-500M's dimensions (≈450M parameters with
  SmolVLA's 16 VLM layers), ``size="tiny"`` a few-thousand-parameter stand-in.
* **π0 / π0.5** build their PaliGemma and Gemma expert from ``get_gemma_config`` (only ``gemma_2b`` and
  ``gemma_300m`` exist) and a default PaliGemma config (a 400M SigLIP, a 257k vocabulary, a 2048-wide projector).
  :func:`pi_tiny_patches` swaps those module-level names for tiny ones while a model is built *or loaded*; the
  PaliGemma tokenizer (hard-coded in the processors) is replaced by a byte-level stand-in that adds ``<bos>``.

:func:`save_offline_checkpoint` writes an ordinary LeRobot checkpoint directory (``config.json``,
``model.safetensors``, ``policy_{pre,post}processor*.json``) plus the stand-in VLM/tokenizer folder and a
:data:`~gaflow.policies.lerobot.offline.LOAD_HOOK_FILE` naming this module's load hook, which importing this module
registers (:func:`~gaflow.policies.lerobot.offline.register_load_hook`); loading then goes through the policy
class's own ``from_pretrained`` like any checkpoint, inside the hook's patches. A process that loads such a
checkpoint must import this module first (the loader's error says so).

>>> from gaflow.testing.lerobot_tiny import OfflineModelConfig, save_offline_checkpoint  # doctest: +SKIP
>>> path = save_offline_checkpoint(OfflineModelConfig(family="pi05"), "/tmp/tiny_pi05")  # doctest: +SKIP
>>> policy = load_lerobot_policy(f"lerobot:{path}")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gaflow.io import atomic_write_json
from gaflow.policies.lerobot.offline import LOAD_HOOK_FILE, LoadPlan, register_load_hook

FAMILIES = ("smolvla", "pi0", "pi05")
HOOK_NAME = __name__  # the name save_offline_checkpoint writes into LOAD_HOOK_FILE
PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"  # the name LeRobot's π processors hard-code

_SMOLVLM_SPECIALS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]
_BASE_SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


@dataclass
class OfflineModelConfig:
    """What to build. ``chunk_size=None`` means 10 for tiny models and LeRobot's default (50) for full ones."""

    family: str = "smolvla"  # smolvla | pi0 | pi05
    size: str = "tiny"  # tiny | full (full is SmolVLA only: π0 full size needs ~15 GB in bf16)
    action_dim: int = 5
    state_dim: int = 6
    cameras: tuple[str, ...] = ("observation.images.top",)
    image_shape: tuple[int, int, int] = (3, 96, 128)  # (C, H, W) of the raw camera images
    chunk_size: int | None = None
    num_steps: int = 10
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # further policy-config fields (e.g. {"dtype": "bfloat16"})

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}; got {self.family!r}")
        if self.size not in ("tiny", "full"):
            raise ValueError(f"size must be 'tiny' or 'full'; got {self.size!r}")
        if self.size == "full" and self.family != "smolvla":
            raise ValueError("size='full' is only supported for smolvla (π0/π0.5 full size needs ~15 GB)")
        if self.action_dim < 1 or self.state_dim < 1 or not self.cameras:
            raise ValueError("action_dim and state_dim must be >= 1 and at least one camera is needed")
        self.cameras = tuple(self.cameras)
        self.image_shape = tuple(self.image_shape)


# ----------------------------------------------------------------------------------------------- tokenizer


def byte_level_tokenizer(add_bos: bool = False):
    """A byte-level BPE tokenizer with no merges (every byte is a token) and SmolVLM's special tokens.

    ``add_bos=True`` prepends ``<bos>`` like PaliGemma's tokenizer does.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in (*_BASE_SPECIALS, *_SMOLVLM_SPECIALS):
        vocab[tok] = len(vocab)
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        extra_special_tokens={
            "fake_image_token": "<fake_token_around_image>",
            "image_token": "<image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
        },
    )


# ----------------------------------------------------------------------------------------------- SmolVLA


def _smolvlm_dims(size: str) -> dict[str, Any]:
    if size == "full":  # HuggingFaceTB/SmolVLM2-500M-Video-Instruct
        return dict(
            text=dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                      num_key_value_heads=5, head_dim=64, vocab_size=49280, rope_theta=100000.0,
                      max_position_embeddings=8192),
            vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        image_size=512, patch_size=16),
            scale_factor=4, image_seq_len=64, num_vlm_layers=16, image_size=512,
        )
    return dict(
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=512, max_position_embeddings=2048),
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    image_size=128, patch_size=16),
        scale_factor=2, image_seq_len=16, num_vlm_layers=4, image_size=128,
    )


def write_smolvlm_dir(path: str | os.PathLike, size: str = "tiny") -> Path:
    """Write a local SmolVLM config + processor + byte-level tokenizer folder usable as ``vlm_model_name``."""
    from transformers import LlamaConfig, SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor
    from transformers.models.smolvlm.configuration_smolvlm import SmolVLMVisionConfig
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dims = _smolvlm_dims(size)
    tok = byte_level_tokenizer(add_bos=False)
    text = LlamaConfig(rms_norm_eps=1e-5, pad_token_id=tok.pad_token_id, tie_word_embeddings=False, **dims["text"])
    vision = SmolVLMVisionConfig(**dims["vision"])
    config = SmolVLMConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), scale_factor=dims["scale_factor"],
        image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id,
    )
    config.save_pretrained(path)
    edge = {"longest_edge": dims["image_size"]}
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(size=edge, max_image_size=edge),
        tokenizer=tok,
        video_processor=SmolVLMVideoProcessor(),
        image_seq_len=dims["image_seq_len"],
    )
    processor.save_pretrained(path)
    return path


# ----------------------------------------------------------------------------------------------- π0 / π0.5


def _pi_dims(size: str) -> dict[str, Any]:
    # The fused attention in LeRobot's compute_layer_complete reshapes to 8 heads: keep num_heads = 8, and the
    # VLM and the expert must share heads, head_dim and kv heads.
    return dict(
        gemma_2b=dict(width=32, depth=2, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=8),
        gemma_300m=dict(width=16, depth=2, mlp_dim=32, num_heads=8, num_kv_heads=1, head_dim=8),
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=16),
        vocab_size=512,
        image_size=64,
    )


@contextlib.contextmanager
def pi_tiny_patches(family: str, dims: dict[str, Any]) -> Iterator[None]:
    """Swap π0/π0.5's module-level ``get_gemma_config`` and PaliGemma/Gemma classes for tiny ones (restored on
    exit). Needed both to build and to load a tiny π checkpoint (``from_pretrained`` rebuilds the model)."""
    import importlib

    mod = importlib.import_module(f"lerobot.policies.{family}.modeling_{family}")
    orig_get, orig_vlm, orig_expert = (
        mod.get_gemma_config, mod.PaliGemmaForConditionalGenerationWithPiGemma, mod.PiGemmaForCausalLM
    )

    def get_gemma_config(variant: str):
        if variant not in ("gemma_2b", "gemma_300m"):
            return orig_get(variant)  # raises LeRobot's own error
        return mod.GemmaConfig(**dims[variant])

    def paligemma(config):
        vc, tc = config.vision_config, config.text_config
        for key, value in dims["vision"].items():
            setattr(vc, key, value)
        vc.projection_dim = tc.hidden_size  # image tokens are concatenated with language tokens
        tc.vocab_size = dims["vocab_size"]
        config._vocab_size = dims["vocab_size"]  # noqa: SLF001
        config.image_token_index = dims["vocab_size"] - 1
        return orig_vlm(config=config)

    def expert(config):
        config.vocab_size = dims["vocab_size"]
        return orig_expert(config=config)

    mod.get_gemma_config, mod.PaliGemmaForConditionalGenerationWithPiGemma, mod.PiGemmaForCausalLM = (
        get_gemma_config, paligemma, expert
    )
    try:
        yield
    finally:
        mod.get_gemma_config, mod.PaliGemmaForConditionalGenerationWithPiGemma, mod.PiGemmaForCausalLM = (
            orig_get, orig_vlm, orig_expert
        )


@contextlib.contextmanager
def paligemma_tokenizer_standin(tokenizer) -> Iterator[None]:
    """While LeRobot's π processor factories run, resolve the hard-coded PaliGemma tokenizer to ``tokenizer``."""
    import lerobot.processor.tokenizer_processor as tp

    orig = tp.AutoTokenizer

    class _StandIn:
        @staticmethod
        def from_pretrained(name, *args, **kwargs):
            if name == PALIGEMMA_TOKENIZER:
                return tokenizer
            return orig.from_pretrained(name, *args, **kwargs)

    tp.AutoTokenizer = _StandIn
    try:
        yield
    finally:
        tp.AutoTokenizer = orig


# ----------------------------------------------------------------------------------------------- building


def dataset_stats(cfg: OfflineModelConfig) -> dict[str, dict[str, torch.Tensor]]:
    """Non-trivial normalisation statistics (mean/std and quantiles) for state and action."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    stats = {}
    for key, dim in (("observation.state", cfg.state_dim), ("action", cfg.action_dim)):
        mean = torch.randn(dim, generator=g)
        std = 0.5 + torch.rand(dim, generator=g)
        stats[key] = {
            "mean": mean, "std": std, "min": mean - 3 * std, "max": mean + 3 * std,
            "q01": mean - 2.3 * std, "q99": mean + 2.3 * std, "q10": mean - 1.3 * std, "q90": mean + 1.3 * std,
        }
    return stats


def _policy_config(cfg: OfflineModelConfig, vlm_dir: Path | None):
    from lerobot.configs import FeatureType, PolicyFeature

    inputs = {cam: PolicyFeature(FeatureType.VISUAL, cfg.image_shape) for cam in cfg.cameras}
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (cfg.state_dim,))
    outputs = {"action": PolicyFeature(FeatureType.ACTION, (cfg.action_dim,))}
    full = cfg.size == "full"
    chunk = cfg.chunk_size or (50 if full else 10)
    common = {"input_features": inputs, "output_features": outputs, "chunk_size": chunk, "n_action_steps": chunk,
              "device": "cpu", **cfg.extra}
    if cfg.family == "smolvla":
        from lerobot.policies.smolvla import SmolVLAConfig

        dims = _smolvlm_dims(cfg.size)
        side = dims["image_size"]
        return SmolVLAConfig(vlm_model_name=str(vlm_dir), load_vlm_weights=False, num_vlm_layers=dims["num_vlm_layers"],
                             resize_imgs_with_padding=(side, side), num_steps=cfg.num_steps, **common)
    side = _pi_dims(cfg.size)["image_size"]
    if cfg.family == "pi0":
        from lerobot.policies.pi0 import PI0Config

        return PI0Config(image_resolution=(side, side), num_inference_steps=cfg.num_steps, **common)
    from lerobot.policies.pi05 import PI05Config

    return PI05Config(image_resolution=(side, side), num_inference_steps=cfg.num_steps, tokenizer_max_length=96,
                      **common)


def build_offline_policy(cfg: OfflineModelConfig, workdir: str | os.PathLike):
    """Build ``(policy, preprocessor, postprocessor)`` with random weights; stand-in files go to ``workdir``.

    ``workdir`` must outlive the policy's processors (SmolVLA's tokenizer is loaded from ``workdir/vlm``).
    """
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # random weights are reproducible
    stats = dataset_stats(cfg)
    if cfg.family == "smolvla":
        vlm_dir = write_smolvlm_dir(workdir / "vlm", cfg.size)
        config = _policy_config(cfg, vlm_dir)
        with contextlib.redirect_stdout(_Quiet()):
            policy = get_policy_class("smolvla")(config)
        pre, post = make_pre_post_processors(config, dataset_stats=stats)
    else:
        tok = byte_level_tokenizer(add_bos=True)
        tok.save_pretrained(workdir / "tokenizer")
        config = _policy_config(cfg, None)
        with pi_tiny_patches(cfg.family, _pi_dims(cfg.size)):
            policy = get_policy_class(cfg.family)(config)
        with paligemma_tokenizer_standin(tok):
            pre, post = make_pre_post_processors(config, dataset_stats=stats)
    policy.eval()
    return policy, pre, post


def save_offline_checkpoint(cfg: OfflineModelConfig, out_dir: str | os.PathLike) -> Path:
    """Build a random-weight policy and save it as a LeRobot checkpoint directory (plus its load-hook file)."""
    out = Path(out_dir)
    policy, pre, post = build_offline_policy(cfg, out)
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    marker = {"hook": HOOK_NAME, "family": cfg.family, "size": cfg.size, "build": asdict(cfg)}
    if cfg.family == "smolvla":
        marker["vlm_dir"] = "vlm"
    else:
        marker["tokenizer_dir"] = "tokenizer"
        marker["pi_dims"] = _pi_dims(cfg.size)
    atomic_write_json(out / LOAD_HOOK_FILE, marker)
    return out


def offline_load_plan(ckpt: Path, marker: dict[str, Any]) -> LoadPlan:
    """The load hook: stand-in tokenizer, tiny-architecture patches and the relocated VLM folder of a checkpoint
    written by :func:`save_offline_checkpoint` (``marker`` is its parsed load-hook file)."""
    from transformers import AutoTokenizer

    family = marker.get("family")
    if family == "smolvla":
        vlm = ckpt / marker.get("vlm_dir", "vlm")  # the config's absolute path is where it was first saved
        return LoadPlan(tokenizer=AutoTokenizer.from_pretrained(vlm), config_updates={"vlm_model_name": str(vlm)})
    if family in ("pi0", "pi05"):
        if "pi_dims" not in marker:
            raise ValueError("no 'pi_dims' field (the tiny Gemma dimensions the weights were built with)")
        tok = AutoTokenizer.from_pretrained(ckpt / marker.get("tokenizer_dir", "tokenizer"))
        return LoadPlan(patches=pi_tiny_patches(family, marker["pi_dims"]), tokenizer=tok)
    raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")


register_load_hook(HOOK_NAME, offline_load_plan)


def example_observation(
    config, batch_size: int = 1, seed: int = 0, tasks: list[str] | str | None = None
) -> dict[str, Any]:
    """A raw (un-normalised) observation batch for a LeRobot policy config: images in [0, 1], a state near the
    dataset statistics' range and a task string per sample."""
    from lerobot.configs import FeatureType

    g = torch.Generator().manual_seed(seed)
    obs: dict[str, Any] = {}
    for key, feat in config.input_features.items():
        if feat.type is FeatureType.VISUAL:
            if key.split(".")[-1].startswith("empty_camera"):
                continue
            obs[key] = torch.rand((batch_size, *feat.shape), generator=g)
        elif feat.type is FeatureType.STATE:
            obs[key] = torch.randn((batch_size, *feat.shape), generator=g)
    if tasks is None:
        words = ["pick up the red cube", "open the top drawer", "put the bowl on the plate", "push the button"]
        tasks = [words[(seed + i) % len(words)] for i in range(batch_size)]
    obs["task"] = [tasks] * batch_size if isinstance(tasks, str) else list(tasks)
    if len(obs["task"]) != batch_size:
        raise ValueError(f"tasks has {len(obs['task'])} entries for a batch of {batch_size}")
    return obs


class _Quiet:
    """A write-only sink for LeRobot's construction prints."""

    def write(self, _s: str) -> int:
        return 0

    def flush(self) -> None:
        pass
