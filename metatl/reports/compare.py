"""``report.md`` and the figure of ``python -m metatl.transfer compare``: accuracy of every
method per label budget, paired against not transferring, negative transfer, per-block
scores, the ranking of the sources by each score (Kendall tau) and the advice."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from metatl.atomic_io import write_text_atomic
from metatl.reports.markdown import _duration
from metatl.reports.plots import _figure, _save, matplotlib_available
from metatl.training.evaluation import EvalResult
from metatl.transfer.advice import format_advice
from metatl.transfer.compare import PIXELS, SCRATCH, Budget, Comparison
from metatl.transfer.compare_run import SCORES, CompareResult, rank_correlations

if TYPE_CHECKING:
    from metatl.tracking.base import Tracker

__all__ = [
    "accuracy_table",
    "best_table",
    "plot_budget_curves",
    "ranking_table",
    "render_compare_report",
    "render_summary",
    "scores_table",
    "write_compare_report",
]

_KINDS = ("ncm", "linear", "finetune", "own")


def _pct(mean: float, ci: float = math.nan, sign: str = "") -> str:
    text = f"{100 * mean:{sign}.1f}"
    return f"{text} ± {100 * ci:.1f}" if math.isfinite(ci) else text


def _budget(budget: Budget) -> str:
    return "all" if budget == "all" else f"{budget}"


def accuracy_table(comparison: Comparison) -> str:
    """Methods as rows, label budgets as columns, accuracy ± 95% CI in %."""
    budgets = list(comparison.results)
    methods = list(dict.fromkeys(m for row in comparison.results.values() for m in row))
    lines = [
        "| method | " + " | ".join(f"{_budget(b)} / class" for b in budgets) + " |",
        "| --- |" + " --- |" * len(budgets),
    ]
    for method in methods:
        cells = [_cell(comparison.results[b].get(method)) for b in budgets]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(result: EvalResult | None) -> str:
    return "–" if result is None else _pct(result.mean, result.ci95)


def best_table(comparison: Comparison) -> str:
    """Per source and budget: the best block of each kind of method, paired vs scratch."""
    budgets = list(comparison.results)
    lines = [
        "| source | kind | " + " | ".join(f"{_budget(b)} / class" for b in budgets) + " |",
        "| --- | --- |" + " --- |" * len(budgets),
    ]
    for source in comparison.sources:
        for kind in _KINDS:
            cells = []
            for budget in budgets:
                try:
                    method, result = comparison.best(source, budget, kind)
                except KeyError:
                    cells.append("–")
                    continue
                where = method.rpartition("@")[2] if "@" in method else ""
                vs = comparison.paired(budget, SCRATCH).get(method)
                delta = f" ({_pct(*vs, sign='+')} vs scratch)" if vs else ""
                cells.append(f"{_pct(result.mean)}{f' @{where}' if where else ''}{delta}")
            if any(c != "–" for c in cells):
                lines.append(f"| {source} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scores_table(comparison: Comparison) -> str:
    """Per source and block: width, LogME, H-score, statistics gap, MMD to source images."""
    lines = [
        "| source | block | dim | LogME | H-score | gap | MMD | LEEP | NCE |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for source, rows in comparison.scores.items():
        overall = comparison.source_scores.get(source, {})
        for row in rows:
            last = row is rows[-1]
            leep, nce = (overall.get("leep", math.nan), overall.get("nce", math.nan))
            values = [row["logme"], row["h_score"], row["gap"], row["mmd"]]
            values += [leep, nce] if last else [math.nan, math.nan]
            cells = " | ".join(_number(v) for v in values)
            lines.append(f"| {source} | {row['block']} | {row['dim']} | {cells} |")
    return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "–"


def ranking_table(comparison: Comparison) -> str:
    """Kendall tau of each score's ranking of the sources against measured accuracy, with
    the number of sources that have the score (tau over 2 sources is only +-1)."""
    taus = rank_correlations(comparison)
    counts = {
        s: sum(math.isfinite(comparison.score(src, s)) for src in comparison.sources)
        for s in SCORES
    }
    lines = [
        "| budget | " + " | ".join(f"{s} ({counts[s]} sources)" for s in SCORES) + " |",
        "| --- |" + " --- |" * len(SCORES),
    ]
    for budget, row in taus.items():
        lines.append(f"| {budget} / class | " + " | ".join(_number(row[s]) for s in SCORES) + " |")
    return "\n".join(lines)


def negative_transfer_lines(comparison: Comparison) -> str:
    """The transferred methods worse than a reference beyond their interval, one row per
    source, kind and budget, naming the blocks (the N of ``finetune@N``) that fall short
    (``yes`` for a method without blocks: a checkpoint's own adaptation)."""
    found = comparison.negative_transfer()
    if not found:
        return "None: no transferred method is worse than scratch or raw pixels beyond its CI."
    blocks: dict[tuple[str, str, Budget], dict[str, list[str]]] = {}
    for n in found:
        source, _, method = n.method.partition("/")
        kind, _, block = method.partition("@")
        row = blocks.setdefault((source, kind, n.budget), {SCRATCH: [], PIXELS: []})
        row[n.reference].append(block or "yes")  # own: no block to name
    lines = [
        "| source | method | labels / class | blocks worse than scratch | worse than pixels/ncm |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (source, kind, budget), row in sorted(blocks.items(), key=_by_source_kind):
        worse = [", ".join(row[ref]) or "–" for ref in (SCRATCH, PIXELS)]
        lines.append(f"| {source} | {kind} | {_budget(budget)} | {worse[0]} | {worse[1]} |")
    return "\n".join(lines)


def _by_source_kind(item: tuple[tuple[str, str, Budget], object]) -> tuple[str, int, str]:
    (source, kind, budget), _ = item
    order = _KINDS.index(kind) if kind in _KINDS else len(_KINDS)
    return source, order, f"{budget:>6}" if isinstance(budget, int) else budget


def _advice(result: CompareResult) -> str:
    placed = {a.source for a in result.advice}
    controls = [
        f"{name}: a random initialisation (a control), or a source without BatchNorm "
        "statistics: it has no source domain to place on the similarity axis, so no advice"
        for name in result.sources
        if name not in placed
    ]
    text = format_advice(result.advice)
    return "\n\n".join(p for p in (text, "\n".join(f"- {c}" for c in controls)) if p)


def render_compare_report(result: CompareResult, figure: str | None = None) -> str:
    """The Markdown of ``report.md``."""
    c, meta = result.comparison, result.meta
    sources = "\n".join(
        f"- **{n}**: `{spec}` ({c.blocks[n]} blocks)" for n, spec in result.sources.items()
    )
    parts = [
        "# What transfers: source comparison",
        f"Target: **{meta['target']}** ({meta['target_classes']} classes); "
        f"{meta['way']}-way episodes with {meta['query']} queries per class, "
        f"{meta['episodes']} per budget, every method on the same episodes. "
        f"Wall time {_duration(meta['wall_time_s'])} (episodes "
        f"{_duration(meta['episodic_time_s'])}, feature cache "
        f"{'on' if meta['feature_cache'] else 'off'}"
        + (
            f"; all labels {_duration(meta['all_labels_time_s'])}"
            if "all_labels_time_s" in meta
            else ""
        )
        + ").",
        "## Sources\n\n" + sources,
        "References (no transfer): `scratch` — a randomly initialised network trained with the "
        "full fine-tuning recipe; `pixels/ncm` — nearest class mean on raw pixels.",
        "## Best of each kind per source\n\nAccuracy in %, the best block, and the paired "
        "difference to scratch in points (± 95% CI).\n\n" + best_table(c),
    ]
    if figure:
        parts.append(f"![accuracy against labelled images per class]({figure})")
    parts += [
        "## Negative transfer\n\nTransferred methods worse than not transferring, with a paired "
        "95% interval that excludes 0:\n\n" + negative_transfer_lines(c),
        "## Advice\n\n" + _advice(result),
        "## Transferability scores\n\nPer block on the target images, no training: LogME and "
        "H-score (higher: more linearly separable), *gap* (target feature statistics against "
        "the source's BatchNorm statistics, in source variances; higher: more different), MMD "
        "to the source's own images (where known), LEEP and NCE of the source classifier.\n\n"
        + scores_table(c),
        "## Do the scores pick the source?\n\nKendall tau between each score (gap and MMD "
        "negated) and the best fine-tuned accuracy of each source:\n\n" + ranking_table(c),
        "## Every method\n\n" + accuracy_table(c),
    ]
    return "\n\n".join(parts) + "\n"


def render_summary(result: CompareResult) -> str:
    """What the command prints: the best of each kind, negative transfer, the advice table."""
    comparison = result.comparison
    advice = format_advice(result.advice).split("\n\n")[0]
    return "\n\n".join(
        [
            f"{result.meta['target']}: accuracy in % (best block; vs scratch)",
            best_table(comparison),
            _negative_summary(comparison),
            advice,
        ]
    )


def _negative_summary(comparison: Comparison) -> str:
    found = comparison.negative_transfer()
    methods = sorted({n.method for n in found})
    if not found:
        return "Negative transfer: none found."
    worst = min(found, key=lambda n: n.difference)
    return (
        f"Negative transfer: {len(methods)} method(s) worse than not transferring "
        f"(worst: {worst.method} at {_budget(worst.budget)} / class, "
        f"{_pct(worst.difference, worst.ci95, '+')} points vs {worst.reference}); "
        "the report lists them all."
    )


def plot_budget_curves(
    comparison: Comparison, path: str | Path, all_per_class: float | None = None
) -> Path | None:
    """Accuracy against labelled images per class: per source the best probe and the best
    fine-tuning, with scratch and raw pixels; the all-labels budget at ``all_per_class``
    (the training images per class) when given. None with fewer than two budgets."""
    budgets = [b for b in comparison.results if b != "all" or all_per_class]
    if len(budgets) < 2:
        return None
    xs = [all_per_class if b == "all" else b for b in budgets]
    fig = _figure(7.0, 4.2)
    ax = fig.add_subplot()
    for index, source in enumerate(comparison.sources):
        for kind, style in (("linear", "-"), ("finetune", "--")):
            ys = [_best(comparison, source, b, kind) for b in budgets]
            if any(math.isfinite(y) for y in ys):
                ax.plot(xs, ys, style, marker="o", color=f"C{index}", label=f"{source} {kind}")
    for reference, color in ((SCRATCH, "black"), (PIXELS, "grey")):
        ys = [_mean(comparison.results[b].get(reference)) for b in budgets]
        if any(math.isfinite(y) for y in ys):
            ax.plot(xs, ys, ":", marker="x", color=color, label=reference)
    ax.set_xscale("log")
    labels = [f"all ({x:.0f})" if b == "all" else str(b) for b, x in zip(budgets, xs, strict=True)]
    ax.set_xticks(xs, labels)
    ax.minorticks_off()
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7, ncols=2)
    return _save(fig, path)


def _best(comparison: Comparison, source: str, budget: Budget, kind: str) -> float:
    try:
        return 100 * comparison.best(source, budget, kind)[1].mean
    except KeyError:
        return math.nan


def _mean(result: EvalResult | None) -> float:
    return math.nan if result is None else 100 * result.mean


def write_compare_report(out_dir: Path, result: CompareResult, tracker: Tracker) -> Path:
    """Write ``report.md`` (and ``budgets.png`` when matplotlib is there) and log both."""
    figure = None
    if matplotlib_available():
        meta = result.meta
        per_class = (
            meta["train_images"] / meta["target_classes"] if "train_images" in meta else None
        )
        figure = plot_budget_curves(result.comparison, out_dir / "budgets.png", per_class)
    path = write_text_atomic(
        out_dir / "report.md",
        render_compare_report(result, figure.name if figure is not None else None),
    )
    if figure is not None:
        tracker.log_image("budgets", figure)
    tracker.log_artifact(path, "report")
    return path
