"""``python -m metatl.transfer compare`` as a function: load, check, compare, advise, write.

Everything that can be checked is checked before the comparison's directory is made: the
config, the target data, every source (a bad spec or checkpoint fails in seconds, not after
an hour of fine-tuning), and that the episodes can be drawn. The directory
(``<out_dir>/compare-<dataset>-<time>``) then receives ``config.yaml``, the networks of the
all-labels budget (``runs/``), ``results.json`` and the report.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from episodes import LabelledImages
from metatl.atomic_io import write_text_atomic
from metatl.config import ConfigError, RunConfig, config_to_dict
from metatl.tracking import Tracker, create_tracker
from metatl.training.data import load_split
from metatl.training.device import resolve_device
from metatl.training.distributed import (
    broadcast_object,
    launched_ranks,
    process_group,
    rank_device,
)
from metatl.training.preemption import StopRequest
from metatl.training.run_dir import check_out_dir, lock_run_dir, new_run_dir, with_data_root
from metatl.transfer.advice import Advice, advise_all
from metatl.transfer.all_labels import all_labels_results, check_same_classes
from metatl.transfer.compare import (
    ALL_LABELS,
    REFERENCES,
    Comparison,
    compare_sources,
)
from metatl.transfer.layers import in_study_group
from metatl.transfer.sources import Source, load_source

__all__ = ["SCORES", "CompareResult", "results_json", "run_compare"]

logger = logging.getLogger("metatl.transfer")

SCORES = ("logme", "h_score", "leep", "nce", "gap", "mmd")
"""The transferability scores ranked against accuracy (gap and MMD: lower is better)."""

CompareReport = Callable[[Path, "CompareResult", Tracker], None]


@dataclass(frozen=True)
class CompareResult:
    """What ``compare`` measured and where it wrote it.

    Attributes:
        out_dir: The comparison's directory.
        comparison: Every method at every budget, and the scores.
        advice: One per (source, budget).
        sources: ``name -> spec``.
        meta: Data, budgets, wall times.
    """

    out_dir: Path
    comparison: Comparison
    advice: list[Advice]
    sources: dict[str, str]
    meta: dict[str, Any]


def run_compare(
    config: RunConfig,
    *,
    data_root: str | None = None,
    stop: StopRequest | None = None,
    report: CompareReport | None = None,
) -> CompareResult:
    """Compare the sources of ``config.compare`` on the target ``config.data``.

    Raises:
        ConfigError: No source, a bad spec, clashing names, a target that cannot give the
            episodes, or an all-labels budget on splits with different classes.
        CheckpointError: A source checkpoint that cannot be read or does not fit.
        Interrupted: ``stop`` fired.
    """
    config = with_data_root(config, data_root)
    settings = config.compare
    if not settings.sources:
        raise ConfigError(
            "compare.sources is empty: give one or more NAME=SPEC, e.g. "
            "compare.sources=[imagenet=mobilenet_v2@IMAGENET1K_V1,random=conv4@random,"
            "mine=runs/<run>]"
        )
    launched = launched_ranks()
    if launched.active and settings.all_labels:
        raise ConfigError(
            "compare.all_labels trains every source on the whole training split, on one "
            "process: run it with python, not torchrun, or set compare.all_labels=false"
        )
    data = load_split(config.data, settings.split or config.data.test_split)
    _check_episodes(data, config)
    train = None
    if settings.all_labels:
        train = load_split(config.data, config.data.train_split)
        check_same_classes(train, data)
    sources = _load_sources(config, data)
    check_out_dir(config)
    # Under torchrun the episodes are split over the ranks; rank 0 writes and tracks.
    device = rank_device(resolve_device(config.device), launched)
    with process_group(device) as ranks, contextlib.ExitStack() as hold:
        out_dir = new_run_dir(config, f"compare-{config.data.dataset}") if ranks.is_main else None
        out_dir = broadcast_object(out_dir, ranks)
        if ranks.is_main:
            hold.enter_context(lock_run_dir(out_dir))
            text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
            write_text_atomic(out_dir / "config.yaml", text)
        result = _compare(config, sources, data, train, out_dir, stop)
        if not ranks.is_main:
            return result
        write_text_atomic(out_dir / "results.json", json.dumps(results_json(result), indent=2))
        with contextlib.closing(_tracker(config, out_dir)) as tracker:
            tracker.log_config(config_to_dict(config))
            tracker.log(_summary_metrics(result), 0)
            if report is not None:
                report(out_dir, result, tracker)
    return result


def _check_episodes(data: LabelledImages, config: RunConfig) -> None:
    settings = config.compare
    counts = torch.bincount(data.labels, minlength=data.num_classes)
    needed = max(settings.shots) + settings.query
    enough = int((counts >= needed).sum())
    if enough < settings.way:
        raise ConfigError(
            f"{data.name}: {settings.way}-way episodes of {max(settings.shots)} shots and "
            f"{settings.query} queries need {settings.way} classes of {needed} images; "
            f"{enough} have that many: lower compare.shots, compare.query or compare.way"
        )


def _load_sources(config: RunConfig, data: LabelledImages) -> list[Source]:
    channels, size, _ = data.image_shape
    torch.manual_seed(config.seed)
    sources = [
        load_source(
            spec,
            in_channels=channels,
            image_size=size,
            input_size=config.compare.input_size,
            seed=config.seed,
        )
        for spec in config.compare.sources
    ]
    names = [s.name for s in sources]
    repeated = sorted({n for n in names if names.count(n) > 1 or n in REFERENCES})
    if repeated:
        raise ConfigError(
            f"two sources are named {repeated[0]!r} (or it names a reference): name each NAME=SPEC"
        )
    return sources


def _compare(
    config: RunConfig,
    sources: list[Source],
    data: LabelledImages,
    train: LabelledImages | None,
    out_dir: Path,
    stop: StopRequest | None,
) -> CompareResult:
    settings = config.compare
    device = resolve_device(config.device)
    started = time.perf_counter()
    comparison = compare_sources(
        sources,
        data,
        settings,
        finetune=config.finetune,
        linear_probe=config.linear_probe,
        device=device,
        precision=config.precision,
        stop=stop,
    )
    meta: dict[str, Any] = {
        "target": data.name,
        "target_classes": data.num_classes,
        "episodes": settings.episodes,
        "way": settings.way,
        "query": settings.query,
        "episodic_time_s": time.perf_counter() - started,
        "feature_cache": settings.feature_cache,
    }
    if train is not None:
        started = time.perf_counter()
        comparison.results[ALL_LABELS] = all_labels_results(
            sources, train, data, config, out_dir, stop=stop
        )
        meta |= {"all_labels_time_s": time.perf_counter() - started, "train": train.name}
        meta["train_images"] = len(train)
    gaps = {s.name: comparison.scores[s.name][-1]["gap"] for s in sources}
    measurable = {s.name: s.n_blocks for s in sources if math.isfinite(gaps[s.name])}
    advice = advise_all(
        measurable,
        comparison.results,
        {n: gaps[n] for n in measurable},
        similar_below=settings.similar_below,
        large_from=settings.large_from,
    )
    meta["wall_time_s"] = meta["episodic_time_s"] + meta.get("all_labels_time_s", 0.0)
    return CompareResult(out_dir, comparison, advice, {s.name: s.spec for s in sources}, meta)


def rank_correlations(comparison: Comparison) -> dict[str, dict[str, float]]:
    """``budget -> score -> Kendall tau`` against the best fine-tuned accuracy (the best
    accuracy of any method where there is no fine-tuning)."""
    taus: dict[str, dict[str, float]] = {}
    for budget, row in comparison.results.items():
        kind = "finetune" if any("/finetune@" in m for m in row) else ""
        taus[str(budget)] = {s: comparison.rank_correlation(s, budget, kind) for s in SCORES}
    return taus


def results_json(result: CompareResult) -> dict[str, Any]:
    """``results.json``: JSON-ready, ``None`` where a number is undefined."""
    comparison = result.comparison
    payload = {
        "sources": result.sources,
        "blocks": comparison.blocks,
        "meta": result.meta,
        "results": {
            str(b): {m: r.summary() for m, r in row.items()}
            for b, row in comparison.results.items()
        },
        "paired": {
            ref: {str(b): comparison.paired(b, ref) for b in comparison.results}
            for ref in REFERENCES
        },
        "scores": comparison.scores,
        "source_scores": comparison.source_scores,
        "rank_correlation": rank_correlations(comparison),
        "negative_transfer": [vars(n) for n in comparison.negative_transfer()],
        "advice": [vars(a) for a in result.advice],
    }
    return _finite(payload)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _tracker(config: RunConfig, out_dir: Path) -> Tracker:
    tracked = in_study_group(config, out_dir.name, f"{out_dir.name}/summary", "compare")
    return create_tracker(tracked, out_dir)


def _summary_metrics(result: CompareResult) -> dict[str, float]:
    """``acc/<budget>/<method>`` and ``tau/<budget>/<score>`` for the tracker."""
    metrics = {}
    for budget, row in result.comparison.results.items():
        for method, r in row.items():
            metrics[f"acc/{budget}/{method}"] = r.mean
    for budget, taus in rank_correlations(result.comparison).items():
        for score, tau in taus.items():
            if math.isfinite(tau):
                metrics[f"tau/{budget}/{score}"] = tau
    return metrics
