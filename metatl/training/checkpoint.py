"""Checkpoints: written atomically, read with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from metatl.atomic_io import write_atomic

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt or not a metatl checkpoint."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` via a temporary file and an atomic rename.

    A crash mid-write leaves the previous file intact, never a truncated one.
    """
    return write_atomic(
        path, lambda f: torch.save({"format_version": FORMAT_VERSION, **payload}, f)
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    ``path`` may be a run directory, in which case its ``best.pt`` is read.

    Raises:
        CheckpointError: Missing file, unreadable or truncated file, or foreign content.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged zip/pickle data
        raise CheckpointError(
            f"checkpoint {path} cannot be read (truncated or corrupt?): {err}"
        ) from None
    if not isinstance(payload, dict) or "format_version" not in payload or "model" not in payload:
        raise CheckpointError(f"{path} is not a metatl checkpoint (no model/format_version)")
    return payload
