"""A sweep's outcome: trials ranked by the sweep's metric, as ``results.json``, a Markdown
table (``report.md``, also printed) and a bar chart of the metric per trial."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from metatl.atomic_io import write_text_atomic
from metatl.sweeping.command import format_value
from metatl.sweeping.spec import SweepSpec
from metatl.sweeping.state import SweepState, Trial

__all__ = ["rank_trials", "ranking_table", "write_report", "write_results"]

logger = logging.getLogger(__name__)

PLOT_FILE = "metric.png"


def rank_trials(trials: list[Trial], goal: str) -> list[Trial]:
    """Trials with a metric value, best first (``goal`` maximize or minimize), then the
    others in the order they ran."""
    scored = [t for t in trials if t.metric is not None]
    scored.sort(key=lambda t: (-t.metric if goal == "maximize" else t.metric, t.index))  # type: ignore[operator]
    return scored + [t for t in trials if t.metric is None]


def write_results(state: SweepState, spec: SweepSpec) -> Path:
    """``<sweep dir>/results.json``: the ranked trials with parameters, metric, state."""
    ranked = rank_trials(state.trials, spec.goal)
    payload = {
        "sweep": state.name,
        "dir": state.dir,
        "spec": state.source,
        "method": spec.method,
        "metric": {"name": spec.metric, "goal": spec.goal},
        "ended": state.ended,
        "best": ranked[0].name if ranked and ranked[0].metric is not None else None,
        "trials": [_trial_record(rank, t) for rank, t in enumerate(ranked, 1)],
    }
    path = Path(state.dir) / "results.json"
    return write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


def ranking_table(state: SweepState, spec: SweepSpec) -> str:
    """The ranked trials as a Markdown table: rank, trial, searched parameters, metric value,
    state, run directory (relative to the sweep directory)."""
    metric = spec.metric or "metric"
    rows = [
        f"| rank | trial | parameters | {metric} | state | run dir |",
        "| ---: | --- | --- | ---: | --- | --- |",
    ]
    for rank, trial in enumerate(rank_trials(state.trials, spec.goal), 1):
        params = ", ".join(f"{k}={_short(trial.params.get(k))}" for k in spec.searched)
        value = "" if trial.metric is None else f"{trial.metric:.4f}"
        run_dir = _relative(trial.run_dir, state.dir) if Path(trial.run_dir).is_dir() else ""
        rows.append(
            f"| {rank} | {trial.name} | {params or '-'} | {value} | {trial.state} | {run_dir} |"
        )
    return "\n".join(rows)


def write_report(state: SweepState, spec: SweepSpec) -> Path:
    """``<sweep dir>/report.md``: what was searched, the ranking table, the bar chart of the
    metric per trial (``metric.png``, skipped without matplotlib) and why trials failed."""
    sweep_dir = Path(state.dir)
    lines = [
        f"# Sweep {state.name}",
        "",
        f"Spec `{state.source}`: {spec.method} search by W&B's engine, {len(state.trials)} "
        f"trial(s); {state.ended or 'interrupted'}.",
    ]
    if spec.metric:
        lines.append(f"Metric: `{spec.metric}` ({spec.goal}).")
    fixed = [f"`{k}={format_value(v)}`" for k, v in spec.fixed.items()]
    if fixed:
        lines.append(f"Fixed: {', '.join(fixed)}.")
    if state.overrides:
        lines.append(f"Every trial also: {', '.join(f'`{o}`' for o in state.overrides)}.")
    lines += ["", ranking_table(state, spec), ""]
    plot = _plot(state, spec, sweep_dir / PLOT_FILE)
    if plot is not None:
        lines += [f"![{spec.metric} per trial]({plot.name})", ""]
    notes = [f"- {t.name} ({t.state}): {t.reason}" for t in state.trials if t.reason]
    if notes:
        lines += ["Stopped or failed:", "", *notes, ""]
    return write_text_atomic(sweep_dir / "report.md", "\n".join(lines))


def _plot(state: SweepState, spec: SweepSpec, path: Path) -> Path | None:
    scored = [t for t in rank_trials(state.trials, spec.goal) if t.metric is not None]
    if not scored:
        return None
    try:
        from metatl.reports.plots import matplotlib_available, plot_bars
    except ImportError as err:
        logger.info("no bar chart of the sweep: %s", err)
        return None
    if not matplotlib_available():
        logger.info("no bar chart of the sweep: matplotlib is not installed")
        return None
    errors = _errors(scored, spec.metric or "")
    return plot_bars(
        [t.name for t in scored],
        [t.metric for t in scored],  # type: ignore[misc]
        errors,
        path,
        title=state.name,
        ylabel=spec.metric or "",
    )


def _errors(trials: list[Trial], metric: str) -> list[float] | None:
    """95% CIs when the metric is an accuracy logged next to its ``ci95``."""
    if not metric.endswith("accuracy"):
        return None
    key = metric[: -len("accuracy")] + "ci95"
    values = [t.summary.get(key) for t in trials]
    return [float(v) for v in values] if all(isinstance(v, int | float) for v in values) else None


def _trial_record(rank: int, trial: Trial) -> dict[str, Any]:
    seconds = trial.ended - trial.started if trial.started and trial.ended else None
    return {
        "rank": rank,
        "name": trial.name,
        "params": trial.params,
        "metric": trial.metric,
        "state": trial.state,
        "run_dir": trial.run_dir,
        "exit_code": trial.exit_code,
        "stopped": trial.stopped,
        "reason": trial.reason,
        "seconds": seconds,
    }


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else format_value(value)


def _relative(path: str, base: str) -> str:
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return path
