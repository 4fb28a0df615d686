"""Episodic meta-training with periodic validation, and the full train -> test run."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from episodes import EpisodeDataset, EpisodeSampler, EpisodeSpec, LabelledImages
from metatl.algorithms import Learner
from metatl.atomic_io import write_text_atomic
from metatl.config import RunConfig, config_to_dict
from metatl.reports import write_run_report
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
from metatl.training.evaluation import (
    EvalResult,
    build_methods,
    default_methods,
    evaluate,
    evaluate_methods,
    format_table,
)
from metatl.training.lifecycle import check_run, open_run
from metatl.training.preemption import Interrupted, Preempted, StopRequest
from metatl.training.progress import Progress
from metatl.training.rng import capture_rng_state, restore_rng_state
from metatl.training.run_dir import (
    data_fingerprint,
    read_last_checkpoint,
)

__all__ = ["NonFiniteLossError", "RunResult", "meta_train", "run_experiment"]

logger = logging.getLogger(__name__)

# What a last.pt must hold to continue a run exactly.
RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "step", "val", "rng", "config")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


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


def meta_train(
    learner: Learner,
    train_data: LabelledImages,
    val_data: LabelledImages,
    config: RunConfig,
    run_dir: Path,
    tracker: Tracker,
    *,
    resume: Mapping[str, Any] | None = None,
    stop: StopRequest | None = None,
    fingerprint: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Meta-train ``learner`` on episodes of ``train_data``; keep the best on validation.

    Validation runs every ``train.val_every`` steps (and at the end) on a fixed seeded set
    of episodes, so scores are comparable across steps; the best model is written to
    ``run_dir/best.pt``. ``run_dir/last.pt`` holds everything needed to continue exactly
    (model, optimiser, scheduler, loss scaler, step, best validation, RNG states; the
    episode stream is indexed by step): it is written at each validation, every
    ``train.checkpoint_every`` steps, at the end, and when ``stop`` fires.

    Args:
        resume: A ``last.pt`` payload to continue from; the result is bit-identical (on
            CPU) to a run that was never interrupted.
        stop: Polled after every step and every validation episode; when set, ``last.pt``
            is written and :class:`Preempted` raised (a validation cut short is redone
            first on resume).
        fingerprint: What identifies the data (see :func:`data_fingerprint`), stored in
            ``last.pt`` so that a resumed run can check it reads the same data.

    Returns:
        ``{"accuracy", "ci95", "step"}`` of the best validation.

    Raises:
        NonFiniteLossError: If a loss is NaN or infinite (the message names the step).
        Preempted: If ``stop`` fired; ``last.pt`` is then up to date.
    """
    tcfg, ecfg = config.train, config.episodes
    device = resolve_device(config.device)
    transform = ImageTransform(learner.backbone.input_spec)
    meta_batch = tcfg.meta_batch
    optimizer = torch.optim.Adam(
        learner.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=config.optim.lr_decay_every, gamma=config.optim.lr_decay
    )
    scaler = grad_scaler(device, config.precision)
    best = {"accuracy": -1.0, "ci95": 0.0, "step": 0}
    done = 0
    if resume is not None:
        learner.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        best, done = dict(resume["val"]), int(resume["step"])

    # The episode of each step depends only on (seed, index), so continuing at step `done`
    # means starting the stream at index done * meta_batch.
    episode_stream: Dataset = EpisodeDataset.from_spec(
        train_data,
        EpisodeSpec(ecfg.way, ecfg.shot, ecfg.query),
        config.seed,
        tcfg.steps * meta_batch,
        transform,
    )
    if done:
        episode_stream = Subset(episode_stream, range(done * meta_batch, len(episode_stream)))
    loader = DataLoader(
        episode_stream,
        batch_size=None,
        num_workers=config.data.workers,
        persistent_workers=config.data.workers > 0 and done < tcfg.steps,
    )
    val_spec = EpisodeSpec(tcfg.val_way, tcfg.val_shot, tcfg.val_query)

    def save_last(step: int, rng: dict | None = None, val_pending: bool = False) -> Path:
        return save_checkpoint(
            run_dir / "last.pt",
            {
                "model": learner.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "val": best,
                "rng": rng or capture_rng_state(),
                "config": config_to_dict(config),
                "data": dict(fingerprint or {}),
                # Stopped during this step's validation: resume redoes it first.
                "val_pending": val_pending,
                # Wall time of all training so far, so a resumed run reports the whole.
                "train_time_s": trained_before + time.perf_counter() - started,
            },
        )

    def validate(step: int) -> None:
        """Score the fixed validation episodes; keep ``best.pt``. A stop request during it
        writes ``last.pt`` as of before it, marked pending, and raises Preempted."""
        nonlocal best
        rng = capture_rng_state()
        try:
            result = evaluate(
                {"model": learner},
                val_data,
                val_spec,
                tcfg.val_episodes,
                tcfg.val_seed,
                transform,
                device=device,
                precision=config.precision,
                stop=stop,
            )["model"]
        except Interrupted as err:
            save_last(step, rng=rng, val_pending=True)
            raise Preempted(err.signal_name, step, run_dir / "last.pt", hint) from None
        if result.mean > best["accuracy"]:
            best = {"accuracy": result.mean, "ci95": result.summary()["ci95"], "step": step}
            _save(run_dir / "best.pt", learner, config, step, best)
        tracker.log(
            {
                "val/accuracy": result.mean,
                "val/ci95": result.ci95,
                "val/best_accuracy": best["accuracy"],
            },
            step,
        )
        logger.info("step %d: validation accuracy %.4f ± %.4f", step, result.mean, result.ci95)

    hint = f"python -m metatl.train --resume {run_dir}"
    trained_before = float(resume.get("train_time_s", 0.0)) if resume is not None else 0.0
    started = time.perf_counter()
    if resume is not None:
        restore_rng_state(resume["rng"])  # last: building the learner above drew numbers
        if resume.get("val_pending"):
            validate(done)
            save_last(done)
    window: list[dict[str, float]] = []
    window_start = time.perf_counter()
    episodes = iter(loader)
    bar = Progress("meta-train", tcfg.steps, done)
    for step in range(done + 1, tcfg.steps + 1):
        learner.train()
        optimizer.zero_grad(set_to_none=True)
        # A meta-batch: the mean loss over several episodes, one episode's graph at a time.
        metrics = {"loss": 0.0, "accuracy": 0.0}
        for _ in range(meta_batch):
            with autocast(device, config.precision):
                loss, episode_metrics = learner.loss(next(episodes).to(device))
            if not math.isfinite(episode_metrics["loss"]):
                raise NonFiniteLossError(
                    f"loss is {episode_metrics['loss']} at step {step}; the last good "
                    f"checkpoints are {run_dir / 'last.pt'} (step {done}) and "
                    f"{run_dir / 'best.pt'} (try a lower optim.lr)"
                )
            scaler.scale(loss / meta_batch).backward()
            for key in metrics:
                metrics[key] += episode_metrics[key] / meta_batch
        scaler.step(optimizer)
        scale = scaler.get_scale()
        scaler.update()
        if scaler.get_scale() >= scale:  # fp16 skips a step whose gradients overflowed
            scheduler.step()
        window.append(metrics)
        if step % tcfg.log_every == 0 or step == tcfg.steps:
            elapsed = time.perf_counter() - window_start
            logged = {
                "train/loss": sum(m["loss"] for m in window) / len(window),
                "train/accuracy": sum(m["accuracy"] for m in window) / len(window),
                "train/lr": scheduler.get_last_lr()[0],
                "train/step_time_s": elapsed / len(window),
                "train/episodes_per_s": len(window) * meta_batch / elapsed,
            }
            tracker.log(logged, step)
            bar.show(step, logged)
            window, window_start = [], time.perf_counter()
        bar.update()
        validated = step % tcfg.val_every == 0 or step == tcfg.steps
        if validated:
            validate(step)
            window_start = time.perf_counter()  # validation time is not step time
        periodic = tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0
        if validated or periodic or step == tcfg.steps or stop:
            save_last(step)
            done = step
        if stop and step < tcfg.steps:
            raise Preempted(stop.signal_name or "a stop request", step, run_dir / "last.pt", hint)
    bar.close()
    return best


def run_experiment(
    config: RunConfig,
    *,
    resume_dir: str | Path | None = None,
    data_root: str | None = None,
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

    Raises:
        CheckpointError: ``resume_dir`` has no readable ``last.pt``, or other data.
        RunInUseError: Another process is writing to ``resume_dir``.
        Preempted: SIGTERM/SIGINT arrived; ``last.pt`` is up to date.
    """
    with contextlib.ExitStack() as hold:
        start = check_run(
            hold, config, resume_dir=resume_dir, data_root=data_root, read_resume=_resume_point
        )
        config, splits, device, resume = start.config, start.splits, start.device, start.resume
        for name, spec in episode_specs(config):
            data = splits[name]
            EpisodeSampler(data.labels, spec, 0, 1, split=data.name, class_names=data.class_names)
        channels, size, _ = splits["train"].image_shape
        learner = build_learner(config, channels, size, n_way=config.episodes.way)
        # Channels-last convolutions are ~20% faster on CPU (oneDNN) and on recent GPUs.
        learner = learner.to(device, memory_format=torch.channels_last)
        methods = default_methods(config)
        build_methods(methods, learner, config)
        run_dir, tracker, stop = open_run(hold, start)
        logger.info(
            "run directory %s; %d train classes, %d validation classes; %s, %s",
            run_dir,
            splits["train"].num_classes,
            splits["val"].num_classes,
            device,
            config.precision,
        )
        started = time.perf_counter()
        if config.train.steps:
            best_val = meta_train(
                learner,
                splits["train"],
                splits["val"],
                config,
                run_dir,
                tracker,
                resume=resume,
                stop=stop,
                fingerprint=data_fingerprint(splits),
            )
        else:  # a learner that only adapts per episode (linear probe, fine-tune): as is
            best_val = {}
            _save(run_dir / "best.pt", learner, config, 0, best_val)
        train_time = time.perf_counter() - started
        if resume is not None:
            train_time += float(resume.get("train_time_s", 0.0))
        hint = f"python -m metatl.train --resume {run_dir}"
        if stop:  # between training and the test: last.pt already holds the final step
            raise Preempted(
                stop.signal_name or "a stop request", config.train.steps, run_dir / "last.pt", hint
            )
        learner.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
        test = run_test(
            methods,
            learner,
            splits["test"],
            config,
            stop=stop,
            run_dir=run_dir,
            step=config.train.steps,
            resume_hint=hint,
        )
        result = RunResult(run_dir, best_val, test)
        finish_run(result, config, tracker, config.train.steps, {"train_time_s": train_time})
        return result


def run_test(
    methods: list[str],
    learner: Learner,
    test_data: LabelledImages,
    config: RunConfig,
    *,
    stop: StopRequest | None,
    run_dir: Path,
    step: int,
    resume_hint: str,
) -> dict[str, dict[str, EvalResult]]:
    """The final test of a run whose training is done; a stop request cuts it short.

    Raises:
        Preempted: ``stop`` fired during the test. When the run has a ``last.pt`` (it
            trained), ``--resume`` redoes only the test; a run without training is
            simply started again.
    """
    try:
        return evaluate_methods(methods, learner, test_data, config, stop=stop)
    except Interrupted as err:
        last = run_dir / "last.pt"
        if last.is_file():
            raise Preempted(err.signal_name, step, last, resume_hint) from None
        raise Interrupted(
            err.signal_name,
            f"stopped by {err.signal_name} during the test; run {run_dir} did no training, "
            "so start it again rather than resume it",
        ) from None


def finish_run(
    result: RunResult, config: RunConfig, tracker: Tracker, step: int, extra: dict[str, Any]
) -> None:
    """The end of every run: the test table logged at ``step``, ``results.json`` (with
    ``extra``), the summary, ``report.md`` and the plots, logged and uploaded."""
    run_dir = result.run_dir
    tracker.log(test_metrics(result.test), step)
    write_results(run_dir / "results.json", result, config, extra)
    tracker.log_summary(summary_metrics(result) | {"train_time_s": extra.get("train_time_s")})
    for plot in write_run_report(run_dir, table=result.test):
        tracker.log_image(plot.stem, plot, step=step)
        tracker.log_artifact(plot)
    tracker.log_artifact(run_dir / "report.md")
    tracker.log_artifact(run_dir / "best.pt")


def summary_metrics(result: RunResult) -> dict[str, float]:
    """A run's final numbers under flat keys, as a sweep's metric or W&B's summary reads them."""
    return {f"val/best_{k}": float(v) for k, v in result.best_val.items()} | test_metrics(
        result.test
    )


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


def _save(path: Path, learner: Learner, config: RunConfig, step: int, val: dict) -> None:
    save_checkpoint(
        path,
        {"model": learner.state_dict(), "config": config_to_dict(config), "step": step, "val": val},
    )
