"""Episodic meta-training with periodic validation, and the full train -> test run."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from episodes import EpisodeDataset, EpisodeSampler, EpisodeSpec, LabelledImages
from metatl.algorithms import Learner
from metatl.config import RunConfig, config_to_dict
from metatl.tracking import JsonlTracker, Tracker
from metatl.training.builders import build_learner
from metatl.training.checkpoint import load_checkpoint, save_checkpoint
from metatl.training.data import ImageTransform, load_split
from metatl.training.evaluation import (
    EvalResult,
    build_methods,
    default_methods,
    evaluate,
    evaluate_methods,
    format_table,
)

__all__ = ["NonFiniteLossError", "RunResult", "meta_train", "run_experiment"]

logger = logging.getLogger(__name__)


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
) -> dict[str, float]:
    """Meta-train ``learner`` on episodes of ``train_data``; keep the best on validation.

    Validation runs every ``train.val_every`` steps (and at the end) on a fixed seeded set
    of episodes, so scores are comparable across steps; the best state is written to
    ``run_dir/best.pt``, the final one to ``run_dir/last.pt``.

    Returns:
        ``{"accuracy", "ci95", "step"}`` of the best validation.

    Raises:
        NonFiniteLossError: If a loss is NaN or infinite (the message names the step).
    """
    tcfg, ecfg = config.train, config.episodes
    device = torch.device(config.device)
    transform = ImageTransform(learner.backbone.input_spec)
    meta_batch = tcfg.meta_batch
    train_episodes = EpisodeDataset.from_spec(
        train_data,
        EpisodeSpec(ecfg.way, ecfg.shot, ecfg.query),
        config.seed,
        tcfg.steps * meta_batch,
        transform,
    )
    loader = DataLoader(
        train_episodes,
        batch_size=None,
        num_workers=config.data.workers,
        persistent_workers=config.data.workers > 0,
    )
    val_spec = EpisodeSpec(tcfg.val_way, tcfg.val_shot, tcfg.val_query)
    optimizer = torch.optim.Adam(
        learner.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=config.optim.lr_decay_every, gamma=config.optim.lr_decay
    )
    best = {"accuracy": -1.0, "ci95": 0.0, "step": 0}
    window: list[dict[str, float]] = []
    window_start = time.perf_counter()
    episodes = iter(loader)
    bar = tqdm(range(1, tcfg.steps + 1), desc="meta-train", unit="step", dynamic_ncols=True)
    for step in bar:
        learner.train()
        optimizer.zero_grad(set_to_none=True)
        # A meta-batch: the mean loss over several episodes, one episode's graph at a time.
        metrics = {"loss": 0.0, "accuracy": 0.0}
        for _ in range(meta_batch):
            loss, episode_metrics = learner.loss(next(episodes).to(device))
            if not math.isfinite(episode_metrics["loss"]):
                raise NonFiniteLossError(
                    f"loss is {episode_metrics['loss']} at step {step}; the last good model is "
                    f"{run_dir / 'best.pt'} (try a lower optim.lr)"
                )
            (loss / meta_batch).backward()
            for key in metrics:
                metrics[key] += episode_metrics[key] / meta_batch
        optimizer.step()
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
            bar.set_postfix(
                loss=f"{logged['train/loss']:.3f}", acc=f"{logged['train/accuracy']:.3f}"
            )
            window, window_start = [], time.perf_counter()
        if step % tcfg.val_every == 0 or step == tcfg.steps:
            result = evaluate(
                {"model": learner},
                val_data,
                val_spec,
                tcfg.val_episodes,
                tcfg.val_seed,
                transform,
                device=device,
            )["model"]
            tracker.log({"val/accuracy": result.mean, "val/ci95": result.ci95}, step)
            logger.info("step %d: validation accuracy %.4f ± %.4f", step, result.mean, result.ci95)
            if result.mean > best["accuracy"]:
                best = {"accuracy": result.mean, "ci95": result.ci95, "step": step}
                _save(run_dir / "best.pt", learner, config, step, best)
            window_start = time.perf_counter()  # validation time is not step time
    _save(run_dir / "last.pt", learner, config, tcfg.steps, best)
    return best


def run_experiment(config: RunConfig) -> RunResult:
    """Meta-train, then test the best checkpoint; everything lands in a new run directory.

    Data, episode shapes, the learner and the test methods are all checked before the run
    directory is created, so a bad config fails at once and leaves nothing behind.
    """
    torch.manual_seed(config.seed)
    splits = {
        name: load_split(config.data, getattr(config.data, f"{name}_split"))
        for name in ("train", "val", "test")
    }
    for name, spec in episode_specs(config):
        data = splits[name]
        EpisodeSampler(data.labels, spec, 0, 1, split=data.name, class_names=data.class_names)
    channels, size, _ = splits["train"].image_shape
    learner = build_learner(config, channels, size, n_way=config.episodes.way)
    # Channels-last convolutions are ~20% faster on CPU (oneDNN) and on recent GPUs.
    learner = learner.to(config.device, memory_format=torch.channels_last)
    methods = default_methods(config)
    build_methods(methods, learner, config)

    run_dir = new_run_dir(config)
    tracker = JsonlTracker(run_dir / "metrics.jsonl")
    try:
        (run_dir / "config.yaml").write_text(
            yaml.safe_dump(config_to_dict(config), sort_keys=False)
        )
        tracker.log_config(config_to_dict(config))
        logger.info(
            "run directory %s; %d train classes, %d validation classes",
            run_dir,
            splits["train"].num_classes,
            splits["val"].num_classes,
        )
        started = time.perf_counter()
        if config.train.steps:
            best_val = meta_train(learner, splits["train"], splits["val"], config, run_dir, tracker)
        else:  # a learner that only adapts per episode (linear probe, fine-tune): test it as is
            best_val = {}
            _save(run_dir / "best.pt", learner, config, 0, best_val)
        train_time = time.perf_counter() - started
        learner.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
        test = evaluate_methods(methods, learner, splits["test"], config)
        for setting, results in test.items():
            tracker.log(
                {f"test/{setting}/{m}/accuracy": r.mean for m, r in results.items()}
                | {f"test/{setting}/{m}/ci95": r.ci95 for m, r in results.items()},
                config.train.steps,
            )
        result = RunResult(run_dir, best_val, test)
        write_results(run_dir / "results.json", result, config, {"train_time_s": train_time})
        tracker.log_artifact(run_dir / "best.pt")
        return result
    finally:
        tracker.close()


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


def new_run_dir(config: RunConfig) -> Path:
    """A fresh directory under ``out_dir``; never reuses (and so never overwrites) one."""
    name = config.name or time.strftime(
        f"{config.model.algorithm}-{config.model.backbone}-{config.data.dataset}-%Y%m%d-%H%M%S"
    )
    base = Path(config.out_dir) / name
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    candidate.mkdir(parents=True)
    return candidate


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
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _save(path: Path, learner: Learner, config: RunConfig, step: int, val: dict) -> None:
    save_checkpoint(
        path,
        {"model": learner.state_dict(), "config": config_to_dict(config), "step": step, "val": val},
    )
