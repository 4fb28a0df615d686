"""Fan one run's records out to several trackers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from metatl.tracking.base import Tracker

__all__ = ["MultiTracker"]


class MultiTracker:
    """Sends every call to each tracker, in order.

    Args:
        trackers: The trackers; the first is usually the JSONL log, the source of truth.
    """

    def __init__(self, trackers: Iterable[Tracker]) -> None:
        self.trackers: tuple[Tracker, ...] = tuple(trackers)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(metrics, step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_config(config)

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        for tracker in self.trackers:
            tracker.log_artifact(path, name)

    def log_image(
        self, key: str, path: str | Path, step: int | None = None, caption: str | None = None
    ) -> None:
        for tracker in self.trackers:
            tracker.log_image(key, path, step, caption)

    def log_summary(self, values: Mapping[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_summary(values)

    def close(self) -> None:
        """Close every tracker, then re-raise the first error any of them raised."""
        first: BaseException | None = None
        for tracker in self.trackers:
            try:
                tracker.close()
            except BaseException as err:  # the others must still close
                if first is None:
                    first = err
        if first is not None:
            raise first
