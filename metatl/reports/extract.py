"""What the reports read from a run: metric series from its log, shapes of its settings."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["TestSummary", "mean_ci", "metric_series", "parse_setting", "shots_by_way"]

TestSummary = Mapping[str, Mapping[str, Mapping[str, float | None]]]
"""Setting -> method -> ``EvalResult.summary()`` (``accuracy``, ``ci95``, ``episodes``), the
``test`` section of ``results.json``; ``ci95`` is ``None`` where undefined (one episode)."""

_SETTING = re.compile(r"\s*(\d+)-way\s+(\d+)-shot\s*")


def metric_series(records: Iterable[Mapping[str, Any]], key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of ``key`` over the ``metrics`` records of a log, sorted by step.

    A step logged twice (after a resume) keeps its later value, and a resume marker (a
    ``metrics`` record with ``resumed_from_step``, or a ``resume`` record with a ``step``)
    drops the values logged earlier past that step: training was rewound to it and logs
    them again. Values that are not numbers are skipped; ``"nan"`` and ``"inf"`` (how the
    JSONL log keeps non-finite floats) become floats.
    """
    values: dict[int, float] = {}
    for record in records:
        kind = record.get("kind")
        rewind = record.get("step") if kind == "resume" else record.get("resumed_from_step")
        if isinstance(rewind, int):
            values = {s: v for s, v in values.items() if s <= rewind}
        if kind != "metrics" or key not in record or not isinstance(record.get("step"), int):
            continue
        value = _number(record[key])
        if value is not None:
            values[record["step"]] = value
    return sorted(values.items())


def parse_setting(setting: str) -> tuple[int, int] | None:
    """``"5-way 1-shot"`` -> ``(5, 1)``; ``None`` for any other name."""
    match = _SETTING.fullmatch(setting)
    return (int(match[1]), int(match[2])) if match else None


def shots_by_way(test: TestSummary) -> dict[int, list[int]]:
    """Way -> the sorted shot counts tested at that way (settings that do not parse are left
    out)."""
    ways: dict[int, set[int]] = {}
    for setting in test:
        parsed = parse_setting(setting)
        if parsed is not None:
            ways.setdefault(parsed[0], set()).add(parsed[1])
    return {way: sorted(shots) for way, shots in sorted(ways.items())}


def mean_ci(summary: Mapping[str, float | None]) -> tuple[float, float]:
    """``(accuracy, ci95)`` of one ``EvalResult.summary()``; an undefined ``ci95`` (``None``,
    one episode) is NaN, which the tables show as ``n/a`` and the plots draw no bar for."""
    ci = summary.get("ci95", 0.0)
    return float(summary["accuracy"] or 0.0), math.nan if ci is None else float(ci)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
