"""The local JSONL log: one JSON object per line, the source of truth of a run."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["JsonlTracker", "read_jsonl"]


class JsonlTracker:
    """Appends every record to ``path`` as a line ``{"kind", "step", "time", ...}``.

    Kinds: ``metrics`` (the metrics at top level), ``config``, ``artifact`` (path, name),
    ``image`` (key, path, caption; step may be null) and ``summary``. Each line is flushed
    when written, so a killed run keeps everything it logged.

    Args:
        path: The log file (created with its parent directories; appended to).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, sort_keys=True, default=_jsonable) + "\n")
        self._file.flush()

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self._write(
            {
                "kind": "metrics",
                "step": int(step),
                "time": time.time(),
                **{k: _finite(v) for k, v in metrics.items()},
            }
        )

    def log_config(self, config: Mapping[str, Any]) -> None:
        self._write({"kind": "config", "time": time.time(), "config": dict(config)})

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        self._write(
            {
                "kind": "artifact",
                "time": time.time(),
                "path": str(path),
                "name": name or Path(path).name,
            }
        )

    def log_image(
        self, key: str, path: str | Path, step: int | None = None, caption: str | None = None
    ) -> None:
        self._write(
            {
                "kind": "image",
                "step": None if step is None else int(step),
                "time": time.time(),
                "key": key,
                "path": str(path),
                "caption": caption,
            }
        )

    def log_summary(self, values: Mapping[str, Any]) -> None:
        self._write({"kind": "summary", "time": time.time(), "summary": _finite_tree(values)})

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a JSONL log, in order."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible rather than invalid
    return value


def _finite_tree(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _finite_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_tree(v) for v in value]
    return _finite(value)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
