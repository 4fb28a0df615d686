"""``report.md`` of a run or an evaluation: summary, test table, paired differences, plots.

The tables are :func:`~metatl.training.evaluation.format_table` and
:func:`~metatl.training.evaluation.format_paired_table`, the same Markdown the CLIs print.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metatl.adaptation.selection import Selection, format_selection
from metatl.reports.extract import TestSummary, mean_ci
from metatl.training.evaluation import (
    EvalResult,
    few_episodes_note,
    format_paired_table,
    format_table,
)

__all__ = ["render_run_report"]


def render_run_report(
    results: Mapping[str, Any],
    plots: Sequence[str | Path] = (),
    *,
    table: Mapping[str, Mapping[str, EvalResult]] | None = None,
    relative_to: str | Path | None = None,
) -> str:
    """The Markdown report of a ``results.json``.

    Args:
        results: A run's ``results.json`` (``run_dir``, ``best_val``, ``test``, ``config``,
            ``train_time_s``) or an evaluation's (which adds ``checkpoint`` and ``split``);
            missing keys leave their line out.
        plots: PNGs to show, in order.
        table: The per-episode results behind ``results["test"]``, when still in memory:
            the test table is then made from it, and the paired differences between methods
            (which need per-episode accuracies, absent from ``results.json``) are added.
        relative_to: The report's directory; plot links are made relative to it.

    Returns:
        The report, ending in a newline.
    """
    checkpoint = results.get("checkpoint")
    title = f"# Evaluation of `{checkpoint}`" if checkpoint else f"# Run `{results.get('run_dir')}`"
    sections = [title, _summary(results)]
    test = _test_table(results.get("test") or {}, table)
    sections += [
        "## Test accuracy",
        "Mean ± 95% confidence interval (%), every method on the same episodes.\n\n" + test
        if test
        else "No test results.",
    ]
    paired = format_paired_table(table) if table else ""
    if paired:
        sections += [
            "## Paired differences",
            "Percentage points, mean ± 95% confidence interval of the per-episode "
            "differences (narrower than the separate intervals when the methods find the "
            "same episodes hard).\n\n" + paired,
        ]
    if results.get("selection"):
        sections += [
            "## Model selection without target labels",
            "The validation each criterion would choose and the target accuracy of that "
            "checkpoint, next to the best any validation reached (the oracle, which needs "
            "the target labels). best.pt is the source_val_accuracy choice.\n\n"
            + format_selection([Selection(**row) for row in results["selection"]]),
        ]
    if plots:
        sections += ["## Plots", "\n\n".join(_image(p, relative_to) for p in plots)]
    return "\n\n".join(s for s in sections if s) + "\n"


def _summary(results: Mapping[str, Any]) -> str:
    config = results.get("config") or {}
    model, data = config.get("model") or {}, config.get("data") or {}
    lines = []
    described = [
        f"{name}: {value}"
        for name, value in (
            (
                "algorithm",
                _what_trained(results, model),
            ),
            ("backbone", model.get("backbone")),
            ("dataset", data.get("dataset")),
        )
        if value
    ]
    if described:
        lines.append(", ".join(described))
    steps = (config.get("train") or {}).get("steps")
    if results.get("kind") in ("pretrain", "adapt"):
        epochs = (config.get("pretrain") or {}).get("epochs")
        kind = "pretraining" if results["kind"] == "pretrain" else "training"
        trained = f"{kind}: {epochs} epochs, {results.get('steps')} steps"
        if results.get("train_time_s") is not None:
            trained += f" in {_duration(results['train_time_s'])}"
        lines.append(trained)
    elif steps == 0:
        lines.append("no meta-training (train.steps=0)")
    elif steps is not None:
        trained = f"meta-training: {steps} steps"
        if results.get("train_time_s") is not None:
            trained += f" in {_duration(results['train_time_s'])}"
        lines.append(trained)
    best = results.get("best_val") or {}
    if "accuracy" in best:
        line = f"best validation: {_percent(*mean_ci(best))}%"
        lines.append(line + (f" at step {best['step']}" if "step" in best else ""))
    if results.get("checkpoint_step") is not None:
        lines.append(f"checkpoint of step {results['checkpoint_step']}")
    episodes = {
        int(r["episodes"])
        for rows in (results.get("test") or {}).values()
        for r in rows.values()
        if "episodes" in r
    }
    if episodes and results.get("kind") == "adapt":
        lines.append(
            "test: every target test image (per-image accuracy); few-shot settings: "
            f"{(config.get('test') or {}).get('episodes')} episodes"
        )
    elif episodes:
        tested = f"test: {'/'.join(map(str, sorted(episodes)))} episodes per setting"
        query = (config.get("test") or {}).get("query")
        tested += f", {query} queries per class" if query else ""
        tested += f", split {results['split']}" if results.get("split") else ""
        lines.append(tested)
    return "\n".join(f"- {line}" for line in lines)


def _what_trained(results: Mapping[str, Any], model: Mapping[str, Any]) -> str | None:
    if results.get("kind") == "pretrain":
        return "supervised pretraining (cross-entropy over every training class)"
    if results.get("kind") == "adapt":
        adapt = (results.get("config") or {}).get("adapt") or {}
        test_time = ", ".join(adapt.get("test_time") or []) or "none"
        return f"domain adaptation {adapt.get('method')} (test-time: {test_time})"
    return model.get("algorithm")


def _test_table(test: TestSummary, table: Mapping[str, Mapping[str, EvalResult]] | None) -> str:

    if table is not None:
        return format_table(table) if any(table.values()) else ""
    # format_table reads only mean and ci95, which the summaries keep; the note on few
    # episodes, which it makes from the per-episode accuracies, comes from their counts.
    rows = {
        setting: {method: EvalResult((), *mean_ci(summary)) for method, summary in rows.items()}
        for setting, rows in test.items()
    }
    if not any(rows.values()):
        return ""
    note = few_episodes_note(
        int(s.get("episodes") or 0) for results in test.values() for s in results.values()
    )
    return format_table(rows) + (f"\n\n{note}" if note else "")


def _image(path: str | Path, relative_to: str | Path | None) -> str:
    link = Path(os.path.relpath(path, relative_to)) if relative_to is not None else Path(path)
    return f"![{Path(path).stem.replace('_', ' ')}]({link.as_posix()})"


def _percent(mean: float, ci: float) -> str:
    return f"{100 * mean:.2f} ± {'n/a' if math.isnan(ci) else f'{100 * ci:.2f}'}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
