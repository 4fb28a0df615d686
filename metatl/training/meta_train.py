"""Episodic meta-training with periodic validation, and the full train -> test run."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from episodes import Episode, EpisodeDataset, EpisodeSampler, EpisodeSpec, LabelledImages
from metatl.algorithms import Learner
from metatl.atomic_io import write_text_atomic
from metatl.config import RunConfig, config_to_dict
from metatl.tracking import Tracker
from metatl.training.builders import build_learner
from metatl.training.checkpoint import (
    CheckpointError,
    checkpoint_config,
    load_checkpoint,
    save_checkpoint,
)
from metatl.training.data import ImageTransform
from metatl.training.device import autocast, grad_scaler, resolve_device
from metatl.training.distributed import (
    EpisodeOrderedGradients,
    Ranks,
    RunningStats,
    broadcast_module,
    broadcast_object,
    current_ranks,
    seed_ranks,
    sum_gradients,
)
from metatl.training.evaluation import (
    EvalResult,
    build_methods,
    default_methods,
    evaluate,
    evaluate_methods,
    format_table,
)
from metatl.training.lifecycle import OpenRun, RunStart, check_run, open_run
from metatl.training.loop import NonFiniteLoss, TrainingLoop
from metatl.training.preemption import Interrupted, StopRequest
from metatl.training.run_dir import (
    data_fingerprint,
    read_last_checkpoint,
)

__all__ = ["EpisodicSteps", "RunResult", "meta_train", "run_experiment"]

logger = logging.getLogger(__name__)

# What a last.pt must hold to continue a run exactly.
RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "step", "val", "rng", "config")


@dataclass
class RunResult:
    """What a run produced.

    Attributes:
        run_dir: Directory with ``config.yaml``, ``metrics.jsonl``, checkpoints, ``results.json``.
        best_val: Best validation accuracy and the step it was reached at.
        test: Setting (e.g. ``"5-way 1-shot"``) -> method -> result.
    """

    run_dir: Path
    best_val: dict[str, float] = field(default_factory=dict)
    test: dict[str, dict[str, EvalResult]] = field(default_factory=dict)

    def table(self) -> str:
        return format_table(self.test)


class EpisodicSteps:
    """Meta-training's step: a meta-batch of episodes, one Adam step on their mean loss.

    The episode of each step depends only on ``(seed, index)``, so a run continued at step
    ``s`` starts the episode stream at index ``s * train.meta_batch``. Under torchrun each
    rank runs its shard of every meta-batch and the gradients are summed over the ranks
    before the step (see :mod:`metatl.training.distributed`): the step is the one-process
    step.

    Args:
        learner: The learner, on ``config.device``.
        train_data: The split episodes are drawn from.
        val_data: The split validation episodes are drawn from.
        config: The run config (``episodes``, ``optim``, ``train``, ``data.workers``).
    """

    label = "meta-train"
    resume_command = "python -m metatl.train"
    lr_key = "optim.lr"
    rate_name = "episodes_per_s"

    def __init__(
        self,
        learner: Learner,
        train_data: LabelledImages,
        val_data: LabelledImages,
        config: RunConfig,
    ) -> None:
        self.learner, self.train_data, self.val_data, self.config = (
            learner,
            train_data,
            val_data,
            config,
        )
        self.device = resolve_device(config.device)
        self.transform = ImageTransform(learner.backbone.input_spec)
        self.items_per_step = config.train.meta_batch
        self.total_steps = config.train.steps
        self.optimizer = torch.optim.Adam(
            learner.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=config.optim.lr_decay_every, gamma=config.optim.lr_decay
        )
        self.scaler = grad_scaler(self.device, config.precision)
        self.ranks = current_ranks()
        self.running_stats = RunningStats(learner) if self.ranks.active else None
        self.ordered = (
            EpisodeOrderedGradients(self._params(), 2, self.ranks)
            if self.ranks.active and config.train.gradient_sum == "episode_order"
            else None
        )
        broadcast_module(learner, self.ranks)
        seed_ranks(config.seed, self.ranks)
        world, meta_batch = self.ranks.world_size, config.train.meta_batch
        if self.ranks.active and self.ranks.is_main and meta_batch % world:
            logger.warning(
                "train.meta_batch=%d on %d processes: %s; a multiple of %d keeps every rank busy",
                meta_batch,
                world,
                f"{world - meta_batch} of them have no episode"
                if meta_batch < world
                else "their shares differ by one episode and the step waits for the larger",
                world,
            )
        self._episodes: Iterator[Episode] | None = None

    def train_step(self, step: int) -> dict[str, float]:
        if self._episodes is None:  # first step of this process: the stream starts here
            self._episodes = iter(self._loader(first_step=step))
        learner, meta_batch, stats = self.learner, self.items_per_step, self.running_stats
        learner.train()
        self.optimizer.zero_grad(set_to_none=True)
        if stats is not None:
            stats.begin_step()
        if self.ordered is not None:
            self.ordered.begin_step()
        # A meta-batch: the mean loss over several episodes, one episode's graph at a time
        # (this rank's share of them under torchrun).
        loss_sum = accuracy_sum = 0.0  # means over the whole meta-batch
        bad: float | None = None
        for position in self.ranks.shard(meta_batch):
            if stats is not None:
                stats.before_episode()
            with autocast(self.device, self.config.precision):
                loss, episode_metrics = learner.loss(next(self._episodes).to(self.device))
            if not math.isfinite(episode_metrics["loss"]):
                if not self.ranks.active:
                    raise NonFiniteLoss(episode_metrics["loss"])
                bad = episode_metrics["loss"]  # raised on every rank after the all-reduce
                continue
            self.scaler.scale(loss / meta_batch).backward()
            if stats is not None:
                stats.after_episode(position)
            terms = (episode_metrics["loss"] / meta_batch, episode_metrics["accuracy"] / meta_batch)
            if self.ordered is not None:
                self.ordered.after_episode(position, terms)
            loss_sum += terms[0]
            accuracy_sum += terms[1]
        if self.ranks.active:
            if self.ordered is not None:
                (loss_sum, accuracy_sum), any_bad = self.ordered.end_step(
                    meta_batch, bad is not None
                )
            else:
                flags = [loss_sum, accuracy_sum, float(bad is not None)]
                loss_sum, accuracy_sum, any_bad = sum_gradients(self._params(), flags)
            if any_bad:
                raise NonFiniteLoss(bad if bad is not None else float("nan"))
            assert stats is not None
            stats.end_step(meta_batch)
        metrics = {"loss": loss_sum, "accuracy": accuracy_sum}
        self.scaler.step(self.optimizer)
        scale = self.scaler.get_scale()
        self.scaler.update()
        if self.scaler.get_scale() >= scale:  # fp16 skips a step whose gradients overflowed
            self.scheduler.step()
        return metrics | {"lr": self.scheduler.get_last_lr()[0]}

    def _params(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _loader(self, first_step: int) -> DataLoader:
        e, t = self.config.episodes, self.config.train
        stream: Dataset = EpisodeDataset.from_spec(
            self.train_data,
            EpisodeSpec(e.way, e.shot, e.query),
            self.config.seed,
            t.steps * t.meta_batch,
            self.transform,
        )
        if first_step > 1 or self.ranks.active:
            stream = Subset(stream, _ShardedSteps(first_step, t.steps, t.meta_batch, self.ranks))
        workers = self.config.data.workers
        return DataLoader(
            stream, batch_size=None, num_workers=workers, persistent_workers=workers > 0
        )

    def where(self, step: int) -> str:
        return ""

    def log_due(self, step: int) -> bool:
        return step % self.config.train.log_every == 0 or step == self.total_steps

    def validation_due(self, step: int) -> bool:
        return step % self.config.train.val_every == 0 or step == self.total_steps

    def checkpoint_due(self, step: int) -> bool:
        every = self.config.train.checkpoint_every
        return bool(every) and step % every == 0

    def log_extras(self, step: int) -> dict[str, float]:
        return {}

    def best_extras(self, step: int) -> dict[str, Any]:
        return {}

    def validate(self, stop: StopRequest | None) -> EvalResult:
        t = self.config.train
        return evaluate(
            {"model": self.learner},
            self.val_data,
            EpisodeSpec(t.val_way, t.val_shot, t.val_query),
            t.val_episodes,
            t.val_seed,
            self.transform,
            device=self.device,
            precision=self.config.precision,
            stop=stop,
        )["model"]

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def best_state(self) -> dict[str, Any]:
        return {"model": self.learner.state_dict()}

    def load_state_dict(self, payload: dict[str, Any], source: str) -> None:
        self.learner.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])


class _ShardedSteps(Sequence[int]):
    """The episode indices one rank draws from step ``first_step`` to ``last_step``: its
    shard of each step's meta-batch, in order, computed on demand."""

    def __init__(self, first_step: int, last_step: int, meta_batch: int, ranks: Ranks) -> None:
        self.first, self.meta_batch = (first_step - 1) * meta_batch, meta_batch
        self.positions = list(ranks.shard(meta_batch))
        self.steps = last_step - first_step + 1

    def __len__(self) -> int:
        return self.steps * len(self.positions)

    def __getitem__(self, i: int) -> int:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        step, k = divmod(i % len(self), len(self.positions))
        return self.first + step * self.meta_batch + self.positions[k]


def meta_train(
    learner: Learner,
    train_data: LabelledImages,
    val_data: LabelledImages,
    config: RunConfig,
    run_dir: Path,
    tracker: Tracker,
    *,
    resume: dict[str, Any] | None = None,
    stop: StopRequest | None = None,
    fingerprint: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Meta-train ``learner`` on episodes of ``train_data``; keep the best on validation.

    :class:`EpisodicSteps` in the :class:`TrainingLoop`: validation every
    ``train.val_every`` steps (and at the end) on a fixed seeded episode set, the best model
    in ``run_dir/best.pt``; ``run_dir/last.pt`` (model, optimiser, scheduler, loss scaler,
    step, best validation, RNG states) at each validation, every ``train.checkpoint_every``
    steps, at the end and when ``stop`` fires.

    Args:
        resume: A ``last.pt`` payload to continue from; the result is bit-identical (on
            CPU) to a run that was never interrupted.
        stop: Polled after every step and every validation episode.
        fingerprint: What identifies the data (see :func:`data_fingerprint`).

    Returns:
        ``{"accuracy", "ci95", "step"}`` of the best validation.

    Raises:
        NonFiniteLossError: If a loss is NaN or infinite (the message names the step).
        Preempted: If ``stop`` fired; ``last.pt`` is then up to date.
    """
    steps = EpisodicSteps(learner, train_data, val_data, config)
    loop = TrainingLoop(steps, config, run_dir, tracker, fingerprint)
    if resume is not None:
        loop.resume_from(resume, str(run_dir / "last.pt"))
    return loop.run(stop)


def run_experiment(
    config: RunConfig,
    *,
    resume_dir: str | Path | None = None,
    data_root: str | None = None,
    stop: StopRequest | None = None,
    report: ReportWriter | None = None,
) -> RunResult:
    """Meta-train, then test the best checkpoint; everything lands in a new run directory.

    Data, episode shapes, the learner, the test methods and ``out_dir`` are all checked
    before the run directory is created, so a bad config fails at once and leaves nothing
    behind. The run directory is locked while this runs (see :func:`lock_run_dir`).

    Args:
        config: The run's config (ignored when resuming: the run's own is used).
        resume_dir: A run directory to continue from its ``last.pt``, in place.
        data_root: Where the data is now, if not at ``data.root`` (e.g. it moved since the
            run started); it must be the same data.
        stop: Polled after every step and episode; when set, the run writes ``last.pt`` and
            raises :class:`Preempted` (the entrypoints set it on SIGTERM/SIGINT, see
            :func:`~metatl.training.preemption.stop_on_signals`; a library call installs
            no signal handler).
        report: Writes ``report.md`` and the plots at the end (the entrypoints pass
            :func:`metatl.reports.write_run_report`).

    Raises:
        CheckpointError: ``resume_dir`` has no readable ``last.pt``, or other data.
        RunInUseError: Another process is writing to ``resume_dir``.
        Preempted: ``stop`` fired; ``last.pt`` is up to date.
    """
    with contextlib.ExitStack() as hold:
        start = check_run(
            hold, config, resume_dir=resume_dir, data_root=data_root, read_resume=_resume_point
        )
        learner, methods = _build(start)
        run = open_run(hold, start, EpisodicSteps.resume_command, stop)
        config, splits = start.config, start.splits
        logger.info(
            "run directory %s; %d train classes, %d validation classes; %s, %s",
            run.run_dir,
            splits["train"].num_classes,
            splits["val"].num_classes,
            start.device,
            config.precision,
        )
        started = time.perf_counter()
        if config.train.steps:
            best_val = meta_train(
                learner,
                splits["train"],
                splits["val"],
                config,
                run.run_dir,
                run.tracker,
                resume=start.resume,
                stop=run.stop,
                fingerprint=data_fingerprint(splits),
            )
        else:  # a learner that only adapts per episode (linear probe, fine-tune): as is
            best_val = {}
            weights = {"model": learner.state_dict(), "config": config_to_dict(config)}
            if current_ranks().is_main:
                save_checkpoint(run.run_dir / "best.pt", weights | {"step": 0, "val": best_val})
        train_time = time.perf_counter() - started
        train_time += float((start.resume or {}).get("train_time_s", 0.0))
        steps = config.train.steps
        test = test_best(run, learner, learner, methods, splits["test"], config, steps)
        result = RunResult(run.run_dir, best_val, test)
        finish_run(result, config, run.tracker, steps, {"train_time_s": train_time}, report)
        return result


def _build(start: RunStart) -> tuple[Learner, list[str]]:
    """The learner and the test methods, after checking every episode shape can be drawn."""
    config, splits = start.config, start.splits
    for name, spec in episode_specs(config):
        data = splits[name]
        EpisodeSampler(data.labels, spec, 0, 1, split=data.name, class_names=data.class_names)
    channels, size, _ = splits["train"].image_shape
    learner = build_learner(config, channels, size, n_way=config.episodes.way)
    # Channels-last convolutions are ~20% faster on CPU (oneDNN) and on recent GPUs.
    learner = learner.to(start.device, memory_format=torch.channels_last)
    methods = default_methods(config)
    build_methods(methods, learner, config)
    return learner, methods


def test_best(
    run: OpenRun,
    weights: torch.nn.Module,
    learner: Learner,
    methods: list[str],
    test_data: LabelledImages,
    config: RunConfig,
    step: int,
) -> dict[str, dict[str, EvalResult]]:
    """The final test: ``best.pt`` loaded into ``weights``, then ``methods`` built on
    ``learner`` scored on the fixed test episodes.

    Raises:
        Preempted: A stop request came before or during the test. When the run has a
            ``last.pt`` (it trained), ``--resume`` redoes only the test.
        Interrupted: The same for a run without training: it is simply started again.
    """
    if run.stop:  # between training and the test: last.pt already holds the final step
        raise run.preempted(step)
    ranks = current_ranks()  # rank 0 reads best.pt: the others need not see its disk
    best = load_checkpoint(run.run_dir / "best.pt")["model"] if ranks.is_main else None
    weights.load_state_dict(broadcast_object(best, ranks))
    try:
        return evaluate_methods(methods, learner, test_data, config, stop=run.stop)
    except Interrupted as err:
        if (run.run_dir / "last.pt").is_file():
            raise run.preempted(step, err.signal_name) from None
        raise Interrupted(
            err.signal_name,
            f"stopped by {err.signal_name} during the test; run {run.run_dir} did no "
            "training, so start it again rather than resume it",
        ) from None


class ReportWriter(Protocol):
    """Writes a run's ``report.md`` and plots into ``run_dir``; returns the plots.

    :func:`metatl.reports.write_run_report` is one; the entrypoints pass it, so that the
    training library does not depend on the reports.
    """

    def __call__(
        self, run_dir: Path, *, table: Mapping[str, Mapping[str, EvalResult]]
    ) -> Sequence[Path]: ...


def finish_run(
    result: RunResult,
    config: RunConfig,
    tracker: Tracker,
    step: int,
    extra: dict[str, Any],
    report: ReportWriter | None = None,
) -> None:
    """The end of every run: the test table logged at ``step``, ``results.json`` (with
    ``extra``), the summary; with ``report``, ``report.md`` and the plots, logged and
    uploaded. Rank 0's work alone under torchrun."""
    if not current_ranks().is_main:
        return
    run_dir = result.run_dir
    tracker.log(test_metrics(result.test), step)
    write_results(run_dir / "results.json", result, config, extra)
    tracker.log_summary(summary_metrics(result) | {"train_time_s": extra.get("train_time_s")})
    if report is not None:
        for plot in report(run_dir, table=result.test):
            tracker.log_image(plot.stem, plot, step=step)
            tracker.log_artifact(plot)
        tracker.log_artifact(run_dir / "report.md")
    tracker.log_artifact(run_dir / "best.pt")


def summary_metrics(result: RunResult) -> dict[str, float]:
    """A run's final numbers under flat keys, as a sweep's metric or W&B's summary reads them."""
    best = {f"val/best_{k}": float(v) for k, v in result.best_val.items() if v is not None}
    return best | test_metrics(result.test)


def test_metrics(test: Mapping[str, Mapping[str, EvalResult]]) -> dict[str, float]:
    """``test/<setting>/<method>/accuracy`` and ``.../ci95`` of a test table."""
    flat = {}
    for setting, rows in test.items():
        for method, r in rows.items():
            flat[f"test/{setting}/{method}/accuracy"] = r.mean
            flat[f"test/{setting}/{method}/ci95"] = r.ci95
    return flat


def _resume_point(run_dir: Path) -> tuple[dict[str, Any], RunConfig]:
    """The ``last.pt`` payload of ``run_dir`` and the run's own config."""
    checkpoint = read_last_checkpoint(run_dir)
    missing = [k for k in RESUME_KEYS if k not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{run_dir / 'last.pt'} cannot resume a run: it lacks {', '.join(missing)} "
            "(written by an older metatl?)"
        )
    return checkpoint, checkpoint_config(checkpoint, run_dir / "last.pt")


def episode_specs(config: RunConfig) -> list[tuple[str, EpisodeSpec]]:
    """Every episode shape a run draws, with the split it draws from."""
    e, t, v = config.episodes, config.test, config.train
    specs = []
    if v.steps:
        specs += [
            ("train", EpisodeSpec(e.way, e.shot, e.query)),
            ("val", EpisodeSpec(v.val_way, v.val_shot, v.val_query)),
        ]
    return specs + [("test", EpisodeSpec(t.way, shot, t.query)) for shot in t.shots]


def write_results(
    path: Path, result: RunResult, config: RunConfig, extra: dict[str, Any] | None = None
) -> None:
    payload = {
        "run_dir": str(result.run_dir),
        "best_val": result.best_val,
        "test": {s: {m: r.summary() for m, r in rows.items()} for s, rows in result.test.items()},
        "config": config_to_dict(config),
        **(extra or {}),
    }
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
