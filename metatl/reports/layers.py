"""Figures, tables and ``report.md`` of a layer-transfer study (see
:mod:`metatl.reports.layer_findings` for the summary over seeds and the paper's findings):
the shapes of Yosinski et al.'s Figures 2 and 3, one table per split, the findings judged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metatl.atomic_io import write_text_atomic
from metatl.reports.layer_findings import (
    BASES,
    TRANSFERRED,
    TREATMENTS,
    Cell,
    Finding,
    findings,
    missing_runs,
    split_kind,
    split_order,
    study_blocks,
    summarise,
)
from metatl.reports.markdown import _duration
from metatl.reports.plots import INSTALL_HINT, _figure, _save, matplotlib_available

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from metatl.tracking.base import Tracker

__all__ = [
    "layer_table",
    "log_to_tracker",
    "plot_figure2",
    "plot_figure3",
    "render_layer_report",
    "write_layer_report",
    "write_study_report",
]

_GLOSSARY = {
    "baseA": "trained from scratch on A (accuracy on A)",
    "baseB": "trained from scratch on B",
    "BnB": "first n blocks copied from baseB and frozen, the rest re-initialised, trained on B",
    "BnB+": "as BnB, but every block fine-tuned on B",
    "AnB": "first n blocks copied from baseA and frozen, the rest re-initialised, trained on B",
    "AnB+": "as AnB, but every block fine-tuned on B",
    "random": "first n blocks random and frozen, the rest trained on B",
}

_STYLE: dict[str, dict[str, str]] = {
    "BnB": {"color": "C0", "marker": "o", "linestyle": "-"},
    "BnB+": {"color": "C9", "marker": "s", "linestyle": "--"},
    "AnB": {"color": "C3", "marker": "o", "linestyle": "-"},
    "AnB+": {"color": "C1", "marker": "s", "linestyle": "--"},
    "random": {"color": "C7", "marker": "^", "linestyle": ":"},
}

# --------------------------------------------------------------------------------------- plots


def plot_figure2(cells: Sequence[Cell], meta: Mapping[str, Any], path: str | Path) -> Path:
    """The shape of the paper's Figure 2: accuracy on B against n, one panel per split.

    One line with markers and 95% CI error bars per transferred treatment, the seeds as
    faint dots, baseB at n = 0 and as a horizontal line with its CI shaded.

    Args:
        cells: From :func:`summarise`.
        meta: The study's ``meta`` (``blocks``, split ``kind``).
        path: The PNG to write.

    Returns:
        ``path``.

    Raises:
        ValueError: If there is no cell to plot.
        ImportError: If matplotlib is missing.
    """
    return _save(_draw_figure2(cells, meta), path)


def _draw_figure2(cells: Sequence[Cell], meta: Mapping[str, Any]) -> Figure:
    on_b = [c for c in cells if c.treatment != "baseA"]
    splits = split_order(meta, (c.split for c in on_b))
    if not splits:
        raise ValueError("no accuracy on B to plot")
    top = study_blocks(meta, (c.n for c in cells)) - 1
    fig = _figure(1.6 + 4.0 * len(splits), 3.8)
    axes = fig.subplots(1, len(splits), squeeze=False, sharey=True)[0]
    for ax, split in zip(axes, splits, strict=True):
        _figure2_panel(ax, [c for c in on_b if c.split == split], top)
        kind = split_kind(meta, split)
        ax.set_title(f"{split} ({kind})" if kind else split)
    axes[0].set_ylabel("accuracy on B (%)")
    _legend(fig, axes)
    return fig


def _figure2_panel(ax: Axes, cells: Sequence[Cell], top: int) -> None:
    base = next((c for c in cells if c.treatment == "baseB"), None)
    if base is not None:
        y, e = 100 * base.mean, 100 * base.error
        ax.axhline(y, color="black", linewidth=1, label="baseB")
        if math.isfinite(e):
            ax.axhspan(y - e, y + e, color="black", alpha=0.1, linewidth=0, label="baseB 95% CI")
        _points(ax, [base], 0.0, {"color": "black", "marker": "o", "markerfacecolor": "white"})
    present = [t for t in TRANSFERRED if any(c.treatment == t for c in cells)]
    for i, treatment in enumerate(present):
        row = sorted((c for c in cells if c.treatment == treatment), key=lambda c: c.n)
        offset = 0.07 * (i - (len(present) - 1) / 2)
        _points(ax, row, offset, {**_STYLE[treatment], "label": treatment})
    ax.set_xticks(range(top + 1))
    ax.set_xlim(-0.5, top + 0.5)
    ax.set_xlabel("n: blocks transferred")
    ax.grid(alpha=0.3)


def _points(ax: Axes, row: Sequence[Cell], offset: float, style: Mapping[str, Any]) -> None:
    xs = [c.n + offset for c in row]
    errors = [100 * c.error if math.isfinite(c.error) else 0.0 for c in row]
    ax.errorbar(xs, [100 * c.mean for c in row], yerr=errors, capsize=3, **style)
    for x, c in zip(xs, row, strict=True):
        if c.seeds > 1:
            dots = [100 * a for a in c.accuracies]
            ax.scatter([x] * len(dots), dots, s=9, alpha=0.3, linewidths=0, color=style["color"])


def _legend(fig: Figure, axes: Iterable[Axes]) -> None:
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize="small")


def plot_figure3(cells: Sequence[Cell], meta: Mapping[str, Any], path: str | Path) -> Path:
    """The shape of the paper's Figure 3: AnB and AnB+ minus baseB (points) against n, the
    similar and dissimilar splits overlaid, with 95% CIs and a zero line.

    Args:
        cells: From :func:`summarise`.
        meta: The study's ``meta``.
        path: The PNG to write.

    Returns:
        ``path``.

    Raises:
        ValueError: If no AnB or AnB+ cell has a difference to baseB.
        ImportError: If matplotlib is missing.
    """
    return _save(_draw_figure3(cells, meta), path)


def _draw_figure3(cells: Sequence[Cell], meta: Mapping[str, Any]) -> Figure:
    shown = [c for c in cells if c.treatment in ("AnB", "AnB+") and math.isfinite(c.delta)]
    if not shown:
        raise ValueError("no AnB or AnB+ run with a baseB to compare with")
    splits = split_order(meta, (c.split for c in shown))
    fig = _figure(7.4, 3.8)
    ax = fig.subplots()
    ax.axhline(0, color="black", linewidth=1, label="baseB")
    for j, split in enumerate(splits):
        for treatment, style in (("AnB", ("o", "-")), ("AnB+", ("s", "--"))):
            row = sorted(
                (c for c in shown if c.split == split and c.treatment == treatment),
                key=lambda c: c.n,
            )
            if not row:
                continue
            kind = split_kind(meta, split)
            label = f"{treatment}, {split}" + (f" ({kind})" if kind else "")
            ax.errorbar(
                [c.n + 0.05 * (2 * j - 1 + (treatment == "AnB+")) for c in row],
                [100 * c.delta for c in row],
                yerr=[100 * c.delta_error if math.isfinite(c.delta_error) else 0 for c in row],
                color=f"C{j}",
                marker=style[0],
                linestyle=style[1],
                capsize=3,
                label=label,
            )
    top = study_blocks(meta, (c.n for c in cells)) - 1
    ax.set_xticks(range(1, top + 1))
    ax.set_xlabel("n: blocks transferred")
    ax.set_ylabel("accuracy minus baseB (points)")
    ax.set_title("transfer relative to baseB")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize="small")
    return fig


# -------------------------------------------------------------------------------------- report


def _entry(cell: Cell | None, delta: bool) -> tuple[str, bool]:
    """The table entry of ``cell`` and whether it shows a one-seed (binomial) interval."""
    if cell is None:
        return "–", False
    value, error, ci = (
        (cell.delta, cell.delta_error, cell.delta_ci95)
        if delta
        else (cell.mean, cell.error, cell.ci95)
    )
    if not math.isfinite(value):
        return "–", False
    text = f"{100 * value:+.1f}" if delta else f"{100 * value:.1f}"
    if not math.isfinite(error):
        return f"{text} ± n/a", False
    single = not math.isfinite(ci)
    return f"{text} ± {100 * error:.1f}" + ("†" if single else ""), single


def layer_table(cells: Sequence[Cell], meta: Mapping[str, Any], *, delta: bool = False) -> str:
    """Markdown tables, one per split: rows = treatments, columns = n, entries
    ``81.2 ± 1.1`` (percent, mean ± 95% CI over seeds); ``–`` where nothing was run.

    Args:
        cells: From :func:`summarise`.
        meta: The study's ``meta`` (``blocks``, split ``kind``).
        delta: Show the difference to baseB (percentage points) instead of the accuracy.

    Returns:
        The tables, each under a bold split name, and a note on ``†`` (one seed: the runs'
        binomial interval) when it is used; ``""`` without cells.
    """
    columns = sorted(set(range(study_blocks(meta, (c.n for c in cells)))) | {c.n for c in cells})
    parts, dagger = [], False
    for split in split_order(meta, (c.split for c in cells)):
        kind = split_kind(meta, split)
        lines = [
            f"**{split}**" + (f" ({kind})" if kind else ""),
            "",
            "| treatment | " + " | ".join(f"n={n}" for n in columns) + " |",
            "|---|" + "---:|" * len(columns),
        ]
        mine = [c for c in cells if c.split == split]
        for treatment in dict.fromkeys(c.treatment for c in mine):
            by_n = {c.n: c for c in mine if c.treatment == treatment}
            entries = [_entry(by_n.get(n), delta) for n in columns]
            dagger = dagger or any(single for _, single in entries)
            lines.append(f"| {treatment} | " + " | ".join(e for e, _ in entries) + " |")
        parts.append("\n".join(lines))
    if dagger:
        parts.append("† one seed: the 95% interval is the run's binomial one, not over seeds.")
    return "\n\n".join(parts)


def _run_section(meta: Mapping[str, Any], n_records: int, missing: Sequence[str]) -> str:
    blocks, n_values = meta.get("blocks"), meta.get("n_values") or ()
    lines = [
        f"dataset: {meta.get('dataset', '?')}",
        f"backbone: {meta.get('backbone', '?')}, cut into L = {blocks} transferable blocks"
        + (f" (n = {', '.join(map(str, n_values))})" if n_values else ""),
        f"seeds: {', '.join(map(str, meta.get('seeds') or ())) or '?'}",
        "treatments: " + ", ".join(meta.get("treatments") or TREATMENTS),
        f"runs: {n_records} finished"
        + (f", {len(missing)} missing (listed below)" if missing else ", none missing"),
    ]
    if isinstance(meta.get("wall_time_s"), int | float):
        lines.append(f"wall time: {_duration(float(meta['wall_time_s']))}")
    splits = []
    for split, info in (meta.get("splits") or {}).items():
        info = info if isinstance(info, Mapping) else {}
        splits.append(
            f"**{split}** ({info.get('kind', '?')}): A has {info.get('classes_a', '?')} "
            f"classes, B has {info.get('classes_b', '?')}. {info.get('reason', '')}".rstrip()
        )
    glossary = [
        f"**{t}**: {_GLOSSARY[t]}" for t in meta.get("treatments") or TREATMENTS if t in _GLOSSARY
    ]
    return "\n\n".join(
        [
            "## What was run",
            "\n".join(f"- {line}" for line in lines),
            "### Splits",
            "\n".join(f"- {line}" for line in splits) or "No split described.",
            "### Treatments",
            "\n".join(f"- {line}" for line in glossary),
        ]
    )


def _findings_section(found: Sequence[Finding]) -> str:
    rows = [f"| {f.claim} | **{f.verdict}** | {f.evidence.replace('|', '/')} |" for f in found]
    rule = (
        "Each verdict follows a fixed rule (see `metatl.reports.layers.findings`): a "
        "difference counts only when its 95% interval (Student t over seeds, or the runs' "
        "pooled binomial interval with one seed) excludes 0."
    )
    table = "| claim | verdict | evidence |\n|---|---|---|\n" + "\n".join(rows)
    return f"## Findings\n\n{rule}\n\n{table}"


def render_layer_report(
    cells: Sequence[Cell],
    found: Sequence[Finding],
    meta: Mapping[str, Any],
    *,
    figures: Sequence[str] = (),
    figure_note: str = "",
    missing: Sequence[str] = (),
    n_records: int | None = None,
) -> str:
    """The Markdown of ``report.md`` (see :func:`write_layer_report`).

    Args:
        cells: From :func:`summarise`.
        found: From :func:`findings`.
        meta: The study's ``meta``.
        figures: Links to the figure PNGs, relative to the report.
        figure_note: Said where figures are missing (e.g. no matplotlib).
        missing: From :func:`missing_runs`.
        n_records: Runs finished (default: the seeds summed over the cells).

    Returns:
        The report, ending in a newline.
    """
    n_records = sum(c.seeds for c in cells) if n_records is None else n_records
    title = f"# Layer transfer: {meta.get('name', 'study')}"
    intro = (
        "How transferable are features in deep neural networks? (Yosinski et al., 2014), "
        "measured again: accuracy on task B when the first n blocks come from elsewhere."
    )
    figure_lines = [f"![{Path(f).stem}]({f})" for f in figures]
    sections = [title, intro, _run_section(meta, n_records, missing), "## Figures"]
    sections.append("\n\n".join([*figure_lines, figure_note]).strip() or "No figure.")
    sections += [
        "## Accuracy on B",
        "Mean ± 95% CI over seeds, in percent (baseA: accuracy on A).",
        layer_table(cells, meta) or "No run finished.",
        "## Difference to baseB",
        "Accuracy minus baseB of the same split and seed, in percentage points.",
        layer_table([c for c in cells if c.treatment != "baseA"], meta, delta=True) or "–",
        _findings_section(found),
    ]
    if missing:
        sections += ["## Missing runs", f"{len(missing)} runs missing: " + ", ".join(missing) + "."]
    return "\n\n".join(sections) + "\n"


def _write_figures(
    cells: Sequence[Cell], meta: Mapping[str, Any], study_dir: Path
) -> tuple[list[str], str]:
    if not matplotlib_available():
        return [], f"Figures not drawn: matplotlib is not installed ({INSTALL_HINT})."
    names, notes = [], []
    for name, plot in (("figure2", plot_figure2), ("figure3", plot_figure3)):
        try:
            plot(cells, meta, study_dir / f"{name}.png")
            names.append(f"{name}.png")
        except ValueError as err:
            notes.append(f"{name} not drawn: {err}.")
    return names, " ".join(notes)


def write_layer_report(
    study_dir: str | Path, records: Iterable[Mapping[str, Any]], meta: Mapping[str, Any]
) -> Path:
    """Write ``report.md``, ``figure2.png`` and ``figure3.png`` (when matplotlib is
    installed) of a layer-transfer study into ``study_dir``, atomically.

    Args:
        study_dir: The study's directory.
        records: The run records finished so far (a partial study is reported as such).
        meta: The study's ``meta`` (``name``, ``dataset``, ``backbone``, ``blocks``,
            ``n_values``, ``seeds``, ``splits``, ``treatments``, ``wall_time_s``).

    Returns:
        The path of ``report.md``.
    """
    study_dir, records = Path(study_dir), list(records)
    cells = summarise(records)
    figures, note = _write_figures(cells, meta, study_dir)
    text = render_layer_report(
        cells,
        findings(records, meta),
        meta,
        figures=figures,
        figure_note=note,
        missing=missing_runs(records, meta),
        n_records=len(records),
    )
    return write_text_atomic(study_dir / "report.md", text)


def log_to_tracker(
    tracker: Tracker,
    cells: Sequence[Cell],
    found: Sequence[Finding],
    figure_paths: Iterable[str | Path] = (),
    *,
    prefix: str = "layers",
) -> None:
    """Log a study's numbers, verdicts and figures to a tracker (e.g. W&B).

    The cells go to the summary as ``<prefix>/<split>/<treatment>[/n<n>]/<stat>`` (stat:
    ``accuracy``, ``ci95``, ``seeds``, ``delta``, ``delta_ci95``; undefined values are left
    out), the verdicts as ``<prefix>/finding/<key>``, the figures as images
    ``<prefix>/<file stem>``. Nothing goes through ``log``: n is not a training step.

    Args:
        tracker: Any :class:`~metatl.tracking.Tracker`.
        cells: From :func:`summarise`.
        found: From :func:`findings`.
        figure_paths: The PNGs to log.
        prefix: Key prefix.
    """
    summary: dict[str, Any] = {}
    for c in cells:
        key = f"{prefix}/{c.split}/{c.treatment}" + ("" if c.treatment in BASES else f"/n{c.n}")
        stats = {
            "accuracy": c.mean,
            "ci95": c.error,
            "seeds": c.seeds,
            "delta": c.delta,
            "delta_ci95": c.delta_error,
        }
        summary.update({f"{key}/{k}": v for k, v in stats.items() if math.isfinite(v)})
    summary.update({f"{prefix}/finding/{f.key}": f.verdict for f in found})
    tracker.log_summary(summary)
    for path in figure_paths:
        tracker.log_image(f"{prefix}/{Path(path).stem}", path, caption=Path(path).name)


def write_study_report(
    study_dir: Path, records: list[dict[str, Any]], meta: dict[str, Any], tracker: Tracker
) -> Path:
    """What ``python -m metatl.transfer layers`` does at the end of a study: write
    ``report.md`` and the figures (:func:`write_layer_report`), then log the same numbers,
    verdicts and figures to the study's tracker (W&B)."""
    path = write_layer_report(study_dir, records, meta)
    figures = [p for p in (study_dir / "figure2.png", study_dir / "figure3.png") if p.exists()]
    log_to_tracker(tracker, summarise(records), findings(records, meta), figures)
    return path
