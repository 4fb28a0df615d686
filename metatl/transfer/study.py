"""A layer-transfer study as one resumable directory (``python -m metatl.transfer layers``).

::

    <out_dir>/layers-conv4-glyphs-<time>/
        config.yaml      the study's config (what --resume reads)
        study.json       what was planned: splits and why, classes, blocks, n, seeds; wall time
        splits/          the classes of tasks A and B of each split and seed
        runs/<split>/seed<k>/<treatment>[-n<n>]/   one training run each (best.pt, last.pt,
                         metrics.jsonl, W&B), e.g. runs/random/seed0/AnB+-n2
        results.jsonl    one line per finished run: its accuracy on held-out images of B
        metrics.jsonl    the study's own tracker (results as they come, then the summary)
        report.md, figure2.png, figure3.png

Runs go in plan order (bases first). A stopped study continues where it stopped: finished
runs are skipped, an interrupted run resumes from its ``last.pt`` exactly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from episodes import LabelledImages
from metatl.atomic_io import write_text_atomic
from metatl.config import ConfigError, RunConfig, config_to_dict, load_config
from metatl.tracking import Tracker, create_tracker
from metatl.training.builders import build_backbone
from metatl.training.checkpoint import CheckpointError, load_checkpoint
from metatl.training.device import resolve_device
from metatl.training.distributed import single_process
from metatl.training.preemption import Preempted, StopRequest
from metatl.training.run_dir import (
    check_out_dir,
    data_fingerprint,
    lock_run_dir,
    new_run_dir,
    with_absolute_paths,
    with_data_root,
)
from metatl.transfer.layers import (
    StudyRun,
    TaskSplit,
    TaskTrainer,
    build_run_model,
    class_pool,
    in_study_group,
    make_tasks,
    n_values,
    run_config,
    study_plan,
)

__all__ = ["RESUME_COMMAND", "StudyReport", "StudyResult", "read_results", "run_layer_study"]

logger = logging.getLogger(__name__)

RESUME_COMMAND = "python -m metatl.transfer layers --resume"
StudyReport = Callable[[Path, list[dict[str, Any]], dict[str, Any], Tracker], Path]
"""``(study_dir, records, meta, tracker) -> report.md``: writes the study's report."""


@dataclass(frozen=True)
class StudyResult:
    """A finished study.

    Attributes:
        study_dir: Its directory.
        records: One dict per run (see ``results.jsonl``), in plan order.
        meta: What ``study.json`` holds.
    """

    study_dir: Path
    records: list[dict[str, Any]]
    meta: dict[str, Any]


@dataclass(frozen=True)
class _Study:
    """A study checked and ready: nothing is written before this exists."""

    config: RunConfig
    plan: list[StudyRun]
    tasks: dict[tuple[str, int], TaskSplit]
    meta: dict[str, Any]


def run_layer_study(
    config: RunConfig,
    *,
    resume_dir: str | Path | None = None,
    data_root: str | None = None,
    stop: StopRequest | None = None,
    report: StudyReport | None = None,
) -> StudyResult:
    """Train every network of the layer-transfer study (see :mod:`metatl.transfer.layers`).

    Data, splits, backbone and plan are checked before the study directory is created.

    Args:
        config: The study's config (``layers``, ``pretrain``, ``model``, ``data``); ignored
            when resuming (the study's own is used).
        resume_dir: A study directory to continue.
        data_root: Where the data is now, if not at ``data.root`` (the same data).
        stop: Polled after every step; when it fires the current run writes ``last.pt`` and
            :class:`Preempted` names the command that continues the study.
        report: Writes the report at the end (the command passes
            :func:`metatl.reports.layers.write_layer_report`'s wrapper).

    Raises:
        ConfigError: A bad setting, or a split that cannot be made from these classes.
        CheckpointError: ``resume_dir`` is not a study or its data changed.
        RunInUseError: Another process works on ``resume_dir``.
        Preempted: ``stop`` fired.
    """
    single_process("python -m metatl.transfer layers")
    with contextlib.ExitStack() as hold:
        study_dir, study = _open(hold, config, resume_dir, data_root)
        records = read_results(study_dir)
        done = {r["run"] for r in records}
        for run in study.plan:
            if run.key in done:
                continue
            started = time.perf_counter()
            record = _train(study, run, study_dir, stop)
            records.append(record)
            write_text_atomic(
                study_dir / "results.jsonl", "".join(json.dumps(r) + "\n" for r in records)
            )
            study.meta["wall_time_s"] += time.perf_counter() - started
            write_text_atomic(study_dir / "study.json", json.dumps(study.meta, indent=2))
            logger.info(
                "%d/%d %s: %.2f%% on held-out images of %s",
                len(records),
                len(study.plan),
                run.key,
                100 * record["accuracy"],
                record["task"],
            )
        # Opened only now: while a W&B run is active, a new tracker joins it (as in a sweep
        # agent), and each network of the study must be a W&B run of its own in the group.
        tracker = _study_tracker(study.config, study_dir, resume=resume_dir is not None)
        hold.callback(tracker.close)
        for position, record in enumerate(records, start=1):
            tracker.log(_flat_record(record), position)
        if report is not None:
            report(study_dir, records, study.meta, tracker)
        return StudyResult(study_dir, records, study.meta)


def read_results(study_dir: Path) -> list[dict[str, Any]]:
    """The records of ``study_dir/results.jsonl`` (empty before the first run ends)."""
    path = study_dir / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def _open(
    hold: contextlib.ExitStack,
    config: RunConfig,
    resume_dir: str | Path | None,
    data_root: str | None,
) -> tuple[Path, _Study]:
    """The study checked, then its directory (new, or the resumed one) locked."""
    if resume_dir is None:
        study = _check(with_data_root(config, data_root))
        check_out_dir(study.config)
        prefix = f"layers-{config.model.backbone}-{config.data.dataset}"
        study_dir = new_run_dir(study.config, prefix)
        hold.enter_context(lock_run_dir(study_dir))
        text = yaml.safe_dump(config_to_dict(study.config), sort_keys=False)
        write_text_atomic(study_dir / "config.yaml", text)
        study.meta["name"] = study_dir.name
        _write_plan(study_dir, study)
        return study_dir, study
    study_dir = Path(resume_dir)
    if not (study_dir / "study.json").is_file() or not (study_dir / "config.yaml").is_file():
        raise CheckpointError(
            f"--resume {study_dir}: not a layer study (no study.json and config.yaml there)"
        )
    hold.enter_context(lock_run_dir(study_dir))
    stored = json.loads((study_dir / "study.json").read_text("utf-8"))
    study = _check(with_data_root(load_config(study_dir / "config.yaml"), data_root))
    if stored["data"] != study.meta["data"]:
        raise CheckpointError(
            f"the data at {study.config.data.root} is not the data study {study_dir} started "
            "with (other classes or image counts); point --data-root at that data"
        )
    study.meta.update(name=stored["name"], wall_time_s=stored["wall_time_s"])
    return study_dir, study


def _check(config: RunConfig) -> _Study:
    """Everything that can go wrong before training: data, backbone, splits, plan."""
    if config.model.pretrained:
        raise ConfigError(
            "the layer study trains every network from scratch; drop model.pretrained "
            f"({config.model.pretrained!r})"
        )
    resolve_device(config.device)
    pool = class_pool(config)
    config = with_absolute_paths(config)
    channels, size, _ = pool.image_shape
    blocks = len(build_backbone(config, channels, size, load_weights=False).blocks)
    layers = config.layers
    plan = study_plan(layers, blocks)
    tasks = {
        (split, seed): make_tasks(pool, split, seed, layers)
        for split in layers.splits
        for seed in layers.seeds
    }
    return _Study(config, plan, tasks, _meta(config, pool, blocks, tasks))


def _meta(
    config: RunConfig,
    pool: LabelledImages,
    blocks: int,
    tasks: dict[tuple[str, int], TaskSplit],
) -> dict[str, Any]:
    layers = config.layers
    splits = {}
    for split in layers.splits:
        first = tasks[(split, layers.seeds[0])]
        splits[split] = {
            "kind": first.kind,
            "reason": first.reason,
            "classes_a": first.a.train.num_classes,
            "classes_b": first.b.train.num_classes,
            "train_images_b": len(first.b.train),
            "test_images_b": len(first.b.test),
        }
    return {
        "name": "",
        "dataset": config.data.dataset,
        "backbone": config.model.backbone,
        "image_size": config.model.input_size or config.data.image_size,
        "blocks": blocks,
        "n_values": n_values(layers, blocks),
        "seeds": list(layers.seeds),
        "treatments": list(layers.treatments),
        "splits": splits,
        "epochs": config.pretrain.epochs,
        "precision": config.precision,
        "wall_time_s": 0.0,
        "data": data_fingerprint({"pool": pool}),
    }


def _write_plan(study_dir: Path, study: _Study) -> None:
    write_text_atomic(study_dir / "study.json", json.dumps(study.meta, indent=2))
    for (split, seed), tasks in study.tasks.items():
        classes = {
            "A": list(tasks.a.train.class_names),
            "B": list(tasks.b.train.class_names),
            "why": tasks.reason,
        }
        text = json.dumps(classes, ensure_ascii=False, indent=1)
        write_text_atomic(study_dir / "splits" / f"{split}-seed{seed}.json", text)


def _study_tracker(config: RunConfig, study_dir: Path, *, resume: bool) -> Tracker:
    tracked = in_study_group(config, study_dir.name, f"{study_dir.name}/summary")
    tracker = create_tracker(tracked, study_dir, resume=resume)
    if not resume:
        tracker.log_config(config_to_dict(config))
    return tracker


def _train(study: _Study, run: StudyRun, study_dir: Path, stop: StopRequest | None) -> dict:
    """Train one run (or continue it from its ``last.pt``); its record."""
    run_dir = study_dir / "runs" / run.key
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_config(study.config, run, study_dir.name)
    tasks = study.tasks[(run.split, run.seed)]
    task = tasks.a if run.task == "A" else tasks.b
    source = run.source()
    source_state = None
    if source is not None:
        source_state = load_checkpoint(study_dir / "runs" / source.key / "best.pt")["model"]
    model = build_run_model(config, run, task, source_state)
    resume = (run_dir / "last.pt").exists()
    with contextlib.closing(create_tracker(config, run_dir, resume=resume)) as tracker:
        if not resume:
            tracker.log_config(config_to_dict(config))
        trainer = TaskTrainer(model, config, task.train, task.test, run_dir, tracker)
        if resume:
            trainer.resume(load_checkpoint(run_dir / "last.pt"), str(run_dir / "last.pt"))
        try:
            best = trainer.fit(stop)
        except Preempted as stopped:
            raise Preempted(
                stopped.signal_name, stopped.step, stopped.checkpoint, _resume_hint(study_dir)
            ) from None
    progress = trainer.progress
    return {
        "split": run.split,
        "seed": run.seed,
        "treatment": run.treatment,
        "n": run.n,
        "task": run.task,
        "accuracy": best["accuracy"],
        "ci95": best["ci95"],
        "test_images": len(task.test),
        "train_images": len(task.train),
        "classes": task.train.num_classes,
        "train_time_s": progress.train_time_s,
        "steps": progress.step,
        "run": run.key,
    }


def _resume_hint(study_dir: Path) -> str:
    return f"{RESUME_COMMAND} {study_dir}"


def _flat_record(record: dict[str, Any]) -> dict[str, float]:
    key = record["run"].replace("/", ".")
    return {f"result/{key}/accuracy": record["accuracy"]}
