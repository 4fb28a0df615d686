"""Write a run directory's ``report.md`` and its plots."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metatl.atomic_io import write_text_atomic
from metatl.reports import plots as _plots
from metatl.reports.extract import metric_series, shots_by_way
from metatl.reports.markdown import render_run_report
from metatl.tracking import read_jsonl
from metatl.training.evaluation import EvalResult

__all__ = ["write_run_report"]

logger = logging.getLogger(__name__)

_CURVES = ("train/loss", "train/accuracy", "val/accuracy")


def write_run_report(
    run_dir: str | Path,
    *,
    results: Mapping[str, Any] | None = None,
    records: Sequence[Mapping[str, Any]] | None = None,
    table: Mapping[str, Mapping[str, EvalResult]] | None = None,
) -> list[Path]:
    """Write ``report.md`` and its PNGs into ``run_dir``.

    The PNGs: ``learning_curves.png`` when the log has training or validation metrics,
    ``accuracy_vs_shots.png`` when some way was tested at two shot counts or more, and
    ``methods.png`` when there are test results. Without matplotlib, ``report.md`` alone is
    written (and one INFO line says how to get the plots). Every file is written to a
    temporary name and renamed, so none is ever left half-written.

    Args:
        run_dir: The run (or evaluation) directory.
        results: Its ``results.json``; read from ``run_dir`` when not given.
        records: Its ``metrics.jsonl`` records; read from ``run_dir`` when not given (none
            if there is no log, as for an evaluation).
        table: The per-episode results behind ``results["test"]``, if still in memory: the
            report then also has the paired differences between methods.

    Returns:
        The PNGs written.
    """
    run_dir = Path(run_dir)
    if results is None:
        results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    if records is None:
        log = run_dir / "metrics.jsonl"
        records = read_jsonl(log) if log.is_file() else []
    test = (
        {s: {m: r.summary() for m, r in rows.items()} for s, rows in table.items()}
        if table is not None
        else results.get("test") or {}
    )
    written: list[Path] = []
    if _plots.matplotlib_available():
        if any(metric_series(records, key) for key in _CURVES):
            written.append(_plots.plot_learning_curves(records, run_dir / "learning_curves.png"))
        if any(len(shots) > 1 for shots in shots_by_way(test).values()):
            written.append(_plots.plot_accuracy_vs_shots(test, run_dir / "accuracy_vs_shots.png"))
        if any(test.values()):
            written.append(_plots.plot_method_bars(test, run_dir / "methods.png"))
    else:
        logger.info("report.md without plots: %s adds them", _plots.INSTALL_HINT)
    report = render_run_report(results, written, table=table, relative_to=run_dir)
    write_text_atomic(run_dir / "report.md", report)
    return written
