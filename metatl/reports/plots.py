"""PNG plots of a run: learning curves, accuracy against shots, methods side by side.

matplotlib is optional (``pip install 'metatl[plots]'``) and imported only when a plot is
drawn. Each plot is its own :class:`matplotlib.figure.Figure` on an Agg canvas, so pyplot's
global state (current figure, backend) is never touched. The PNGs carry no software
metadata, so the same input gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metatl.atomic_io import write_atomic
from metatl.reports.extract import (
    TestSummary,
    mean_ci,
    metric_series,
    parse_setting,
    shots_by_way,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "INSTALL_HINT",
    "matplotlib_available",
    "plot_accuracy_vs_shots",
    "plot_bars",
    "plot_corruption_curves",
    "plot_learning_curves",
    "plot_method_bars",
]

DPI = 120
INSTALL_HINT = "pip install 'metatl[plots]'"
_HEIGHT = 3.6  # inches


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_learning_curves(records: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Training loss, and training and validation accuracy (with its 95% CI band), by step.

    Args:
        records: The records of a run's ``metrics.jsonl`` (see
            :func:`metatl.tracking.read_jsonl`); kinds other than ``metrics`` are ignored.
        path: The PNG to write.

    Returns:
        ``path``.

    Raises:
        ValueError: If the records hold no ``train/`` or ``val/`` metrics.
    """
    records = list(records)
    loss = metric_series(records, "train/loss")
    train_acc = metric_series(records, "train/accuracy")
    val_acc = metric_series(records, "val/accuracy")
    val_ci = dict(metric_series(records, "val/ci95"))
    panels = [p for p, present in (("loss", loss), ("accuracy", train_acc or val_acc)) if present]
    if not panels:
        raise ValueError("no train/loss, train/accuracy or val/accuracy metrics to plot")
    fig = _figure(4.8 * len(panels), _HEIGHT)
    axes = dict(zip(panels, fig.subplots(1, len(panels), squeeze=False)[0], strict=True))
    if "loss" in axes:
        ax = axes["loss"]
        ax.plot(*zip(*loss, strict=True), color="C0")
        ax.set_title("training loss")
        ax.set_ylabel("loss")
    if "accuracy" in axes:
        ax = axes["accuracy"]
        if train_acc:
            steps, acc = zip(*train_acc, strict=True)
            ax.plot(steps, [100 * a for a in acc], color="C0", label="train")
        if val_acc:
            steps, acc = zip(*val_acc, strict=True)
            ci = [val_ci.get(s, 0.0) for s in steps]
            ax.fill_between(
                steps,
                [100 * (a - c) for a, c in zip(acc, ci, strict=True)],
                [100 * (a + c) for a, c in zip(acc, ci, strict=True)],
                color="C1",
                alpha=0.25,
                linewidth=0,
                label="validation 95% CI",
            )
            ax.plot(steps, [100 * a for a in acc], color="C1", marker="o", label="validation")
        ax.set_title("accuracy")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize="small")
    for ax in axes.values():
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_accuracy_vs_shots(test: TestSummary, path: str | Path) -> Path:
    """Test accuracy against shots per class, one line per method with 95% CI error bars
    and one panel per way.

    Args:
        test: Setting (``"5-way 1-shot"``) -> method -> summary with ``accuracy`` and
            ``ci95``, as in ``results.json``; settings of another form are left out.
        path: The PNG to write.

    Returns:
        ``path``.

    Raises:
        ValueError: If no setting names a way and a shot count.
    """
    ways = shots_by_way(test)
    if not ways:
        raise ValueError(f"no '<way>-way <shot>-shot' setting among {', '.join(test) or 'none'}")
    by_shape = {parse_setting(s): rows for s, rows in test.items()}
    methods = _methods(test)
    fig = _figure(max(4.8, 4.2 * len(ways)), _HEIGHT)
    axes = fig.subplots(1, len(ways), squeeze=False, sharey=True)[0]
    for ax, (way, shots) in zip(axes, ways.items(), strict=True):
        for i, method in enumerate(methods):
            points = [
                (shot, *mean_ci(by_shape[way, shot][method]))
                for shot in shots
                if method in by_shape[way, shot]
            ]
            if not points:
                continue
            xs, ys, errors = zip(*points, strict=True)
            ax.errorbar(
                xs,
                [100 * y for y in ys],
                yerr=[100 * e for e in errors],
                color=f"C{i}",
                marker="o",
                capsize=3,
                label=method,
            )
        # Shot counts grow geometrically (1, 5, 20): a log axis, ticked at the shots tested.
        ax.set_xscale("log")
        ax.set_xticks(shots, [str(s) for s in shots])
        ax.minorticks_off()
        ax.set_title(f"{way}-way")
        ax.set_xlabel("shots per class")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[-1].legend(fontsize="small")
    return _save(fig, path)


def plot_method_bars(test: TestSummary, path: str | Path) -> Path:
    """Test accuracy of each method as a bar with its 95% CI, grouped by setting; a dashed
    line marks chance (1 / way) where the setting names its way.

    Args:
        test: Setting -> method -> summary with ``accuracy`` and ``ci95``, as in
            ``results.json``.
        path: The PNG to write.

    Returns:
        ``path``.

    Raises:
        ValueError: If ``test`` holds no result.
    """
    methods = _methods(test)
    if not methods:
        raise ValueError("no test results to plot")
    settings = list(test)
    width = 0.8 / len(methods)
    fig = _figure(max(4.8, 1.8 + 0.45 * len(settings) * len(methods)), _HEIGHT)
    ax = fig.subplots()
    for i, method in enumerate(methods):
        bars = [
            (g + (i - (len(methods) - 1) / 2) * width, *mean_ci(test[s][method]))
            for g, s in enumerate(settings)
            if method in test[s]
        ]
        xs, ys, errors = zip(*bars, strict=True)
        ax.bar(
            xs,
            [100 * y for y in ys],
            width,
            yerr=[100 * e for e in errors],
            capsize=3,
            color=f"C{i}",
            label=method,
        )
    chance = [(g, parse_setting(s)) for g, s in enumerate(settings)]
    for n, (g, shape) in enumerate((g, shape) for g, shape in chance if shape is not None):
        ax.hlines(
            100 / shape[0],
            g - 0.45,
            g + 0.45,
            colors="grey",
            linestyles="dashed",
            label="chance" if n == 0 else None,
        )
    ax.set_xticks(range(len(settings)), settings)
    ax.set_title("test accuracy, mean ± 95% CI")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside right upper", fontsize="small")
    return _save(fig, path)


def plot_bars(
    labels: Sequence[str],
    values: Sequence[float],
    errors: Sequence[float] | None,
    path: str | Path,
    *,
    title: str = "",
    ylabel: str = "",
) -> Path:
    """One bar per label, in the order given, with optional error bars.

    Args:
        labels: Bar names (e.g. sweep trials, best first).
        values: Bar heights, plotted as given (no scaling).
        errors: Error-bar half-widths, or ``None``.
        path: The PNG to write.
        title: Figure title.
        ylabel: Label of the value axis.

    Returns:
        ``path``.

    Raises:
        ValueError: If there are no bars or the lengths differ.
    """
    if (
        not labels
        or len(values) != len(labels)
        or (errors is not None and len(errors) != len(labels))
    ):
        raise ValueError(
            f"plot_bars needs as many values and errors as labels (at least one); got "
            f"{len(labels)} labels, {len(values)} values, "
            f"{'no' if errors is None else len(errors)} errors"
        )
    fig = _figure(max(4.0, 1.5 + 0.5 * len(labels)), _HEIGHT)
    ax = fig.subplots()
    ax.bar(range(len(labels)), values, yerr=errors, capsize=0 if errors is None else 3, color="C0")
    slanted = len(labels) > 4 or max(len(label) for label in labels) > 12
    ax.set_xticks(
        range(len(labels)),
        labels,
        rotation=30 if slanted else 0,
        ha="right" if slanted else "center",
        rotation_mode="anchor",
    )
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_corruption_curves(
    curves: Mapping[str, Mapping[int, Mapping[str, tuple[float, float]]]],
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """Accuracy against corruption severity: one panel per corruption, one line per method
    with its 95% CI band.

    Args:
        curves: Corruption -> severity (0 = clean) -> method -> ``(mean, ci95)`` accuracy
            (fractions).
        path: The PNG to write.
        title: Figure title.

    Returns:
        ``path``.

    Raises:
        ValueError: If there is nothing to plot.
    """
    if not curves or not any(curves.values()):
        raise ValueError("plot_corruption_curves needs at least one corruption with results")
    fig = _figure(3.2 * len(curves) + 0.6, _HEIGHT)
    axes = fig.subplots(1, len(curves), squeeze=False, sharey=True)[0]
    for ax, (kind, by_severity) in zip(axes, curves.items(), strict=True):
        severities = sorted(by_severity)
        methods = list(dict.fromkeys(m for s in severities for m in by_severity[s]))
        for i, method in enumerate(methods):
            points = [(s, *by_severity[s][method]) for s in severities if method in by_severity[s]]
            xs = [p[0] for p in points]
            ax.plot(xs, [100 * p[1] for p in points], marker="o", color=f"C{i}", label=method)
            ax.fill_between(
                xs,
                [100 * (p[1] - p[2]) for p in points],
                [100 * (p[1] + p[2]) for p in points],
                color=f"C{i}",
                alpha=0.2,
            )
        ax.set_title(kind.replace("_", " "))
        ax.set_xlabel("severity (0: clean)")
        ax.set_xticks(severities)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend(loc="lower left")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _methods(test: TestSummary) -> list[str]:
    return list(dict.fromkeys(m for rows in test.values() for m in rows))


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(f"plots need matplotlib: {INSTALL_HINT}") from err
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    return write_atomic(
        path, lambda f: fig.savefig(f, format="png", dpi=DPI, metadata={"Software": None})
    )
