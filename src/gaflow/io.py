"""Atomic file writes: write a temporary file in the target's folder, then ``os.replace`` it into place, so a
crash never leaves a half-written artefact (the one way gaflow writes files)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file (checkpoint checksums)."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file to ``path`` (parents are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: Path(p).write_text(text))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent))


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    return atomic_write(path, lambda p: save_file(tensors, p, metadata=metadata))


def portable_paths(config: dict, out: str | os.PathLike, fields: tuple[str, ...]) -> dict:
    """``config`` with the existing paths in ``fields`` made relative to ``out`` (a ``scheme:path`` spec keeps its
    scheme), so a run folder that moves together with what it points to still describes the same job."""
    config = dict(config)
    for name in fields:
        value = config.get(name)
        if not isinstance(value, str):
            continue
        scheme, sep, rest = value.partition(":")
        if sep and len(scheme) > 1 and rest and Path(rest).exists():  # e.g. compact:<dir> (not C:\ paths)
            config[name] = f"{scheme}:{os.path.relpath(rest, out)}"
        elif Path(value).exists():
            config[name] = os.path.relpath(value, out)
    return config


def job_folder(out: str | os.PathLike, config: dict, filename: str, paths: tuple[str, ...] = ()) -> Path:
    """Create the folder of a resumable job described by ``config`` (saved as ``filename``).

    A re-run in the same folder must describe the same job: resuming never mixes two configurations. The config
    fields named in ``paths`` are stored relative to the folder (:func:`portable_paths`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    cfg = json.loads(json.dumps(portable_paths(config, out, paths)))
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != cfg:
            diff = sorted(k for k in set(previous) | set(cfg) if previous.get(k) != cfg.get(k))
            raise ValueError(f"{out} holds a job with a different configuration (fields {diff}); use another "
                             "output folder, or delete this one to start over")
    else:
        atomic_write_json(path, cfg)
    return out
