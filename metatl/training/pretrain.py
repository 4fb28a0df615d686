"""Supervised whole-class pretraining of a backbone (the "Baseline" / RFS recipe).

Cross-entropy over every class of the source training split with a linear classifier on
the backbone, SGD with momentum and a cosine learning rate; validation is few-shot (nearest
class mean on the backbone's features over fixed episodes), and the best checkpoint is
``model.pretrained`` for meta-training or fine-tuning::

    python -m metatl.pretrain --config configs/pretrain_conv4_glyphs.yaml
    python -m metatl.train --config configs/protonet_conv4_glyphs_pretrained.yaml \\
        model.pretrained=runs/<pretrain run>/best.pt

The batch order of an epoch and each batch's augmentation are functions of
``(seed, epoch, batch)`` only, so ``last.pt`` (model, optimiser, loss scaler, position, best
validation, RNG states) continues a run exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from episodes import EpisodeSampler, EpisodeSpec, LabelledImages
from metatl.algorithms import ProtoNet
from metatl.backbones import Backbone
from metatl.config import ConfigError, RunConfig, config_to_dict
from metatl.tracking import Tracker
from metatl.training.augment import BatchAugment, derived_generator
from metatl.training.builders import build_backbone
from metatl.training.checkpoint import (
    CheckpointError,
    checkpoint_config,
    load_checkpoint,
    save_checkpoint,
)
from metatl.training.data import ImageTransform
from metatl.training.device import autocast, grad_scaler, resolve_device
from metatl.training.evaluation import EvalResult, build_methods, evaluate
from metatl.training.lifecycle import check_run, open_run
from metatl.training.meta_train import (
    NonFiniteLossError,
    RunResult,
    episode_specs,
    finish_run,
    run_test,
)
from metatl.training.preemption import Interrupted, Preempted, StopRequest
from metatl.training.progress import Progress
from metatl.training.rng import capture_rng_state, restore_rng_state
from metatl.training.run_dir import (
    data_fingerprint,
    read_last_checkpoint,
)

__all__ = [
    "RESUME_KEYS",
    "Pretrainer",
    "SupervisedModel",
    "build_model",
    "cosine_lr",
    "run_pretraining",
]

logger = logging.getLogger(__name__)

# What a pretraining last.pt holds besides "model" and "config" to continue exactly.
RESUME_KEYS = ("optimizer", "scaler", "epoch", "batch", "step", "val", "rng", "train_images")

# Stream ids of derived_generator: the batch order of an epoch, the augmentation of a batch.
_ORDER, _AUGMENT = 0, 1


class SupervisedModel(nn.Module):
    """A backbone and a linear classifier over every training class.

    Its state dict holds ``backbone.*`` and ``classifier.*`` keys, so a checkpoint of it is
    directly usable as ``model.pretrained`` (only the ``backbone.*`` keys are read).

    Args:
        backbone: The feature extractor, ``[B, C, H, W] -> [B, D]``.
        num_classes: Classes of the training split.
    """

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(backbone.out_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` images -> ``[B, num_classes]`` logits."""
        return self.classifier(self.backbone(x))


def cosine_lr(step: int, total: int, base: float) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``total``: ``base`` at 0, a
    half cosine down to 0 at ``total``."""
    return 0.5 * base * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def build_model(
    config: RunConfig, train_data: LabelledImages, *, load_pretrained: bool = True
) -> SupervisedModel:
    """A fresh backbone (``model.backbone``, ``model.input_size``) with a classifier over
    every class of ``train_data``, seeded by the global torch RNG.

    Args:
        config: The run config.
        train_data: Its channels and size fix the backbone's input, its classes the head.
        load_pretrained: Load ``model.pretrained`` into the backbone (off when a checkpoint
            overwrites every weight anyway).

    Raises:
        ConfigError: Unknown backbone, one that does not take the data's image size, or
            ``model.pretrained`` cannot be loaded.
    """
    channels, size, _ = train_data.image_shape
    backbone = build_backbone(config, channels, size, load_weights=load_pretrained)
    return SupervisedModel(backbone, train_data.num_classes)


@dataclass
class _Progress:
    """Where a run is: ``epoch`` epochs done, then ``batch`` batches of the next one."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best: dict[str, float] = field(
        default_factory=lambda: {"accuracy": -1.0, "ci95": 0.0, "step": 0, "epoch": 0}
    )
    train_time_s: float = 0.0
    # Stopped during the validation after epoch ``epoch``: resume redoes it first.
    val_pending: bool = False


class _Window:
    """Training metrics since the last log, with step time and images per second."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.restart()

    def restart(self) -> None:
        self.metrics: list[dict[str, float]] = []
        self.start = time.perf_counter()

    def add(self, metrics: dict[str, float]) -> None:
        self.metrics.append(metrics)

    def pop(self) -> dict[str, float]:
        """The ``train/*`` means of the window (``{}`` if empty); then a new window."""
        window, elapsed = self.metrics, time.perf_counter() - self.start
        self.restart()
        if not window:
            return {}
        return {
            "train/loss": sum(m["loss"] for m in window) / len(window),
            "train/accuracy": sum(m["accuracy"] for m in window) / len(window),
            "train/lr": window[-1]["lr"],
            "train/step_time_s": elapsed / len(window),
            "train/images_per_s": len(window) * self.batch_size / elapsed,
        }


class Pretrainer:
    """The pretraining loop of one run directory; resumable exactly from its ``last.pt``.

    Each epoch visits ``len(train_data) // batch_size`` batches of a fresh seeded permutation
    (the remainder is left out of that epoch; a split smaller than a batch is one batch).

    Args:
        model: Backbone and classifier (see :func:`build_model`); moved to the device.
        config: The run config; ``pretrain`` holds the loop's settings, ``train.val_*`` the
            validation episodes, ``train.log_every`` the logging period in steps.
        train_data: The source split; every class is a target of the classifier.
        val_data: The split validation episodes are drawn from.
        run_dir: Where ``best.pt`` and ``last.pt`` are written.
        tracker: Receives ``train/*`` and ``val/*`` metrics at optimiser steps.
        fingerprint: What identifies the data (stored in ``last.pt``, checked on resume).

    Raises:
        ConfigError: Bad ``pretrain`` settings; a device this machine does not have.
    """

    def __init__(
        self,
        model: SupervisedModel,
        config: RunConfig,
        train_data: LabelledImages,
        val_data: LabelledImages,
        run_dir: Path,
        tracker: Tracker,
        fingerprint: dict[str, Any] | None = None,
    ) -> None:
        self.config, self.train_data, self.val_data = config, train_data, val_data
        self.fingerprint = fingerprint or {}
        self.run_dir, self.tracker = Path(run_dir), tracker
        self.device = resolve_device(config.device)
        # Channels-last convolutions are ~20% faster on CPU (oneDNN) and on recent GPUs.
        self.memory_format = (
            torch.channels_last if self.device.type in ("cpu", "cuda") else torch.preserve_format
        )
        self.model = model.to(self.device, memory_format=self.memory_format)
        p = config.pretrain
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay
        )
        self.scaler = grad_scaler(self.device, config.precision)
        self.transform = ImageTransform(model.backbone.input_spec)
        self.augment = BatchAugment(p.augment, p.crop_padding)
        self.batch_size = min(p.batch_size, len(train_data))
        self.batches_per_epoch = len(train_data) // self.batch_size
        self.total_steps = p.epochs * self.batches_per_epoch
        self.progress = _Progress()
        self._order: tuple[int, torch.Tensor] | None = None
        self._last_saved_step: int | None = None

    # ---- checkpoints ---------------------------------------------------------------------

    def state_dict(self, rng: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``last.pt`` payload: everything :meth:`load_state_dict` needs (``rng``: the
        RNG states to store, default the current ones)."""
        pr = self.progress
        return {
            "kind": "pretrain",
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": config_to_dict(self.config),
            "epoch": pr.epoch,
            "batch": pr.batch,
            "step": pr.step,
            "val": dict(pr.best),
            "train_time_s": pr.train_time_s,
            "train_images": len(self.train_data),
            "rng": rng or capture_rng_state(),
            "data": self.fingerprint,
            "val_pending": pr.val_pending,
        }

    def load_state_dict(self, payload: dict[str, Any], source: str = "last.pt") -> None:
        """Continue from a ``last.pt`` payload (RNG states included: call this last).

        Raises:
            CheckpointError: The payload lacks resume state, does not fit the model, or was
                written for a training split of another size.
        """
        missing = [k for k in RESUME_KEYS if k not in payload]
        if missing:
            raise CheckpointError(
                f"{source} cannot resume a pretraining run: it lacks {', '.join(missing)} "
                "(is it a python -m metatl.pretrain checkpoint?)"
            )
        if payload["train_images"] != len(self.train_data):
            raise CheckpointError(
                f"{source} was written for a training split of {payload['train_images']} "
                f"images; {self.train_data.name} now has {len(self.train_data)}"
            )
        try:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            reason = " ".join(str(err).split())
            raise CheckpointError(f"{source} does not fit this run's model: {reason}") from None
        self.scaler.load_state_dict(payload["scaler"])
        self.progress = _Progress(
            epoch=int(payload["epoch"]),
            batch=int(payload["batch"]),
            step=int(payload["step"]),
            best=dict(payload["val"]),
            train_time_s=float(payload.get("train_time_s", 0.0)),
            val_pending=bool(payload.get("val_pending", False)),
        )
        self._last_saved_step = self.progress.step
        restore_rng_state(payload["rng"])

    def save_last(self, rng: dict[str, Any] | None = None) -> Path:
        path = save_checkpoint(self.run_dir / "last.pt", self.state_dict(rng))
        self._last_saved_step = self.progress.step
        return path

    def save_best(self) -> Path:
        pr = self.progress
        return save_checkpoint(
            self.run_dir / "best.pt",
            {
                "kind": "pretrain",
                "model": self.model.state_dict(),
                "config": config_to_dict(self.config),
                "step": pr.step,
                "epoch": pr.epoch,
                "val": dict(pr.best),
            },
        )

    # ---- the loop --------------------------------------------------------------------------

    def batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``index`` of epoch ``epoch`` (0-based), augmented, on the device.

        Returns:
            Images ``[B, C, S, S]`` (float, normalised, at the backbone's input size) and
            labels int64 ``[B]``.
        """
        if self._order is None or self._order[0] != epoch:
            generator = derived_generator(self.config.seed, _ORDER, epoch)
            self._order = (epoch, torch.randperm(len(self.train_data), generator=generator))
        items = self._order[1][index * self.batch_size : (index + 1) * self.batch_size]
        images = self.transform(self.train_data.images[items])
        images = self.augment(images, derived_generator(self.config.seed, _AUGMENT, epoch, index))
        images = images.to(self.device, non_blocking=True).contiguous(
            memory_format=self.memory_format
        )
        return images, self.train_data.labels[items].to(self.device, non_blocking=True)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One optimiser step at the scheduled learning rate; ``{"loss", "accuracy", "lr"}``.

        Raises:
            NonFiniteLossError: Before any update, if the loss is NaN or infinite.
        """
        pr, p = self.progress, self.config.pretrain
        lr = cosine_lr(pr.step, self.total_steps, p.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast(self.device, self.config.precision):
            logits = self.model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=p.label_smoothing)
        value = float(loss.detach())
        if not math.isfinite(value):
            last = self.run_dir / "last.pt"
            kept = (
                f"the last good checkpoint is {last} (step {self._last_saved_step})"
                if self._last_saved_step is not None
                else "no checkpoint was written yet"
            )
            raise NonFiniteLossError(
                f"loss is {value} at step {pr.step + 1} (epoch {pr.epoch + 1}, batch "
                f"{pr.batch + 1} of {self.batches_per_epoch}); {kept} (try a lower pretrain.lr)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        accuracy = float((logits.detach().argmax(1) == labels).float().mean())
        return {"loss": value, "accuracy": accuracy, "lr": lr}

    def validate(self, stop: StopRequest | None = None) -> EvalResult:
        """Nearest class mean on the backbone's features over the ``train.val_*`` episodes.

        Raises:
            Interrupted: ``stop`` fired during it.
        """
        t = self.config.train
        return evaluate(
            {"protonet": ProtoNet(self.model.backbone)},
            self.val_data,
            EpisodeSpec(t.val_way, t.val_shot, t.val_query),
            t.val_episodes,
            t.val_seed,
            self.transform,
            workers=self.config.data.workers,
            device=self.device,
            precision=self.config.precision,
            stop=stop,
        )["protonet"]

    def fit(self, stop: StopRequest | None = None) -> dict[str, float]:
        """Train from the current position to the last epoch.

        Validation follows every ``pretrain.val_every``-th epoch and the last; a better
        score writes ``best.pt``. ``last.pt`` is written at the end of every epoch, and also
        every ``train.checkpoint_every`` steps if that is set.

        Args:
            stop: Polled between batches; when set, ``last.pt`` is written and
                :class:`Preempted` raised.

        Returns:
            The best validation: ``{"accuracy", "ci95", "step", "epoch"}``.

        Raises:
            NonFiniteLossError: The loss became NaN or infinite (message names the step).
            Preempted: ``stop`` fired; ``last.pt`` is up to date.
        """
        pr, epochs = self.progress, self.config.pretrain.epochs
        bar = Progress("pretrain", self.total_steps, pr.step)
        started = time.perf_counter()
        window = _Window(self.batch_size)

        def flush() -> None:
            logged = window.pop()
            if logged:
                logged["train/epoch"] = pr.epoch + pr.batch / self.batches_per_epoch
                self.tracker.log(logged, pr.step)
                bar.show(pr.step, logged)

        def account() -> None:
            nonlocal started
            now = time.perf_counter()
            pr.train_time_s += now - started
            started = now

        try:
            if pr.val_pending:
                self._validate_and_keep_best(stop)
                self.save_last()
            while pr.epoch < epochs:
                self.model.train()
                while pr.batch < self.batches_per_epoch:
                    if stop:
                        flush()
                        account()
                        self.preempt(stop)
                    metrics = self.train_step(*self.batch(pr.epoch, pr.batch))
                    pr.batch += 1
                    pr.step += 1
                    bar.update()
                    window.add(metrics)
                    if pr.step % self.config.train.log_every == 0:
                        flush()
                    every = self.config.train.checkpoint_every
                    if every and pr.step % every == 0 and pr.batch < self.batches_per_epoch:
                        account()
                        self.save_last()
                flush()
                pr.epoch, pr.batch = pr.epoch + 1, 0
                if pr.epoch % self.config.pretrain.val_every == 0 or pr.epoch == epochs:
                    account()
                    self._validate_and_keep_best(stop)
                    window.restart()  # validation time is not step time
                account()
                self.save_last()
                if stop and pr.epoch < epochs:
                    self.preempt(stop, written=True)
        finally:
            bar.close()
        return dict(pr.best)

    def _validate_and_keep_best(self, stop: StopRequest | None) -> None:
        """Validate; keep ``best.pt``. A stop request during it writes ``last.pt`` as of
        before it, marked pending, and raises :class:`Preempted`."""
        pr = self.progress
        rng = capture_rng_state()
        pr.val_pending = True
        try:
            result = self.validate(stop)
        except Interrupted as err:
            self.save_last(rng)
            raise Preempted(
                err.signal_name, pr.step, self.run_dir / "last.pt", self.resume_hint
            ) from None
        pr.val_pending = False
        if result.mean > pr.best["accuracy"]:
            pr.best = {
                "accuracy": result.mean,
                "ci95": result.summary()["ci95"],
                "step": pr.step,
                "epoch": pr.epoch,
            }
            self.save_best()
        self.tracker.log(
            {
                "val/accuracy": result.mean,
                "val/ci95": result.ci95,
                "val/best_accuracy": pr.best["accuracy"],
            },
            pr.step,
        )
        logger.info(
            "epoch %d/%d (step %d): validation accuracy %.4f ± %.4f (best %.4f, epoch %d)",
            pr.epoch,
            self.config.pretrain.epochs,
            pr.step,
            result.mean,
            result.ci95,
            pr.best["accuracy"],
            pr.best["epoch"],
        )

    @property
    def resume_hint(self) -> str:
        return f"python -m metatl.pretrain --resume {self.run_dir}"

    def preempt(self, stop: StopRequest, *, written: bool = False) -> NoReturn:
        """Write ``last.pt`` (unless ``written``) and raise :class:`Preempted`."""
        path = self.run_dir / "last.pt" if written else self.save_last()
        raise Preempted(
            stop.signal_name or "a stop request", self.progress.step, path, self.resume_hint
        )


def run_pretraining(
    config: RunConfig,
    *,
    resume_dir: str | Path | None = None,
    data_root: str | None = None,
) -> RunResult:
    """Pretrain on the source split, then test the best backbone; all in one run directory.

    The test scores ``protonet`` (nearest class mean on the pretrained features), then
    ``test.methods``, then ``pixels`` if ``test.pixel_baseline``, on the fixed ``test``
    episodes. Data, episode shapes, the backbone and the methods are checked before the run
    directory is created. ``model.algorithm`` plays no part.

    Args:
        config: The run's config (ignored when resuming: the run's own is used).
        resume_dir: A run directory to continue from its ``last.pt``, in place; the result
            equals (bit for bit on CPU) that of a run never interrupted.
        data_root: Where the data is now, if not at ``data.root``; it must be the same data.

    Raises:
        ConfigError: A bad setting (before anything is written).
        CheckpointError: ``resume_dir`` has no readable pretraining ``last.pt``, has
            finished, or the data changed.
        RunInUseError: Another process is writing to ``resume_dir``.
        NonFiniteLossError: The loss became NaN or infinite.
        Preempted: SIGTERM/SIGINT arrived; ``last.pt`` is up to date.
    """
    with contextlib.ExitStack() as hold:
        start = check_run(
            hold, config, resume_dir=resume_dir, data_root=data_root, read_resume=_resume_point
        )
        config, splits, device, resume = start.config, start.splits, start.device, start.resume
        # The test runs nearest class mean as "protonet" on the pretrained backbone.
        eval_config = dataclasses.replace(
            config,
            model=dataclasses.replace(config.model, algorithm="protonet"),
            device=str(device),
        )
        t = config.train
        specs = [s for s in episode_specs(config) if s[0] == "test"]
        for name, spec in [("val", EpisodeSpec(t.val_way, t.val_shot, t.val_query)), *specs]:
            data = splits[name]
            EpisodeSampler(data.labels, spec, 0, 1, split=data.name, class_names=data.class_names)
        if len(splits["train"]) < 2:
            raise ConfigError(
                f"{splits['train'].name} has {len(splits['train'])} image(s); need 2+"
            )
        pixels = ["pixels"] if config.test.pixel_baseline else []
        methods = list(dict.fromkeys(["protonet", *config.test.methods, *pixels]))
        model = build_model(config, splits["train"], load_pretrained=resume is None)
        build_methods(methods, ProtoNet(model.backbone), eval_config)

        prefix = f"pretrain-{config.model.backbone}-{config.data.dataset}"
        run_dir, tracker, stop = open_run(hold, start, prefix)
        trainer = Pretrainer(
            model,
            config,
            splits["train"],
            splits["val"],
            run_dir,
            tracker,
            fingerprint=data_fingerprint(splits),
        )
        if resume is not None:
            trainer.load_state_dict(resume, str(run_dir / "last.pt"))
        logger.info(
            "run directory %s; %d train classes (%d images), %d batches of %d per epoch; %s, %s",
            run_dir,
            splits["train"].num_classes,
            len(splits["train"]),
            trainer.batches_per_epoch,
            trainer.batch_size,
            device,
            config.precision,
        )
        best_val = trainer.fit(stop)
        if stop:  # during the last epoch: last.pt already holds the end of training
            trainer.preempt(stop, written=True)
        model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
        step, train_time = trainer.progress.step, trainer.progress.train_time_s
        test = run_test(
            methods,
            ProtoNet(model.backbone),
            splits["test"],
            eval_config,
            stop=stop,
            run_dir=run_dir,
            step=step,
            resume_hint=trainer.resume_hint,
        )
        result = RunResult(run_dir, best_val, test)
        finish_run(
            result,
            config,
            tracker,
            step,
            {"kind": "pretrain", "train_time_s": train_time, "steps": step},
        )
        return result


def _resume_point(run_dir: Path) -> tuple[dict[str, Any], RunConfig]:
    """The ``last.pt`` payload of ``run_dir`` and the run's own config."""
    checkpoint = read_last_checkpoint(run_dir)
    if checkpoint.get("kind") != "pretrain":
        raise CheckpointError(
            f"{run_dir / 'last.pt'} is not a pretraining checkpoint (resume meta-training runs "
            "with python -m metatl.train --resume)"
        )
    return checkpoint, checkpoint_config(checkpoint, run_dir / "last.pt")
