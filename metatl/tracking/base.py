"""The tracker protocol: where metrics, configs and files of a run go."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["Tracker"]


@runtime_checkable
class Tracker(Protocol):
    """Receives what a run produces. Implementations: JSONL (always on), W&B (optional)."""

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record scalar ``metrics`` at training step ``step``."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Record the effective run configuration."""

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        """Record a file produced by the run (checkpoint, report)."""

    def log_image(
        self, key: str, path: str | Path, step: int | None = None, caption: str | None = None
    ) -> None:
        """Record the image file at ``path`` (a plot, a grid of episodes) under ``key``."""

    def log_summary(self, values: Mapping[str, Any]) -> None:
        """Record the final numbers of the run (e.g. the test table); later values win."""

    def close(self) -> None:
        """Flush and release resources."""
