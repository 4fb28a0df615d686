"""Pretraining of a backbone on the source training split, by ``pretrain.objective``.

``supervised`` (the default) is whole-class pretraining (the "Baseline" / RFS recipe):
cross-entropy over every class of the split with a linear classifier on the backbone.
``rotation`` and ``simclr`` are self-supervised and read the split's images only;
``supervised+rotation`` adds the rotation loss to the supervised one (see
:mod:`metatl.training.objectives`). Whatever the objective: SGD with momentum and a cosine
learning rate on the one :class:`~metatl.training.loop.TrainingLoop`; validation is few-shot
(nearest class mean on the backbone's features over fixed episodes), and the best checkpoint
is ``model.pretrained`` for meta-training or fine-tuning (its heads are saved with it, only
its ``backbone.*`` weights are read)::

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from episodes import EpisodeSampler, EpisodeSpec, LabelledImages
from metatl.algorithms import ProtoNet
from metatl.backbones import Backbone
from metatl.config import ConfigError, RunConfig
from metatl.tracking import Tracker
from metatl.training.augment import BatchAugment, derived_generator
from metatl.training.builders import build_backbone
from metatl.training.checkpoint import (
    CheckpointError,
    checkpoint_config,
)
from metatl.training.data import ImageTransform
from metatl.training.device import autocast, grad_scaler, resolve_device
from metatl.training.distributed import (
    average_buffers,
    broadcast_module,
    current_ranks,
    seed_ranks,
    sum_gradients,
)
from metatl.training.evaluation import EvalResult, build_methods, evaluate
from metatl.training.lifecycle import RunStart, check_run, open_run
from metatl.training.loop import NonFiniteLoss, TrainingLoop
from metatl.training.meta_train import (
    ReportWriter,
    RunResult,
    episode_specs,
    finish_run,
    test_best,
)
from metatl.training.objectives import LabelledObjective, build_heads, build_objective
from metatl.training.preemption import StopRequest
from metatl.training.run_dir import (
    data_fingerprint,
    read_last_checkpoint,
)

__all__ = [
    "RESUME_KEYS",
    "PretrainModel",
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


class PretrainModel(nn.Module):
    """A backbone and the heads a pretraining objective trains on it (a classifier, a
    rotation head, a projection head; see :func:`metatl.training.objectives.build_heads`).

    Its state dict holds ``backbone.*`` keys and one prefix per head, so a checkpoint of it is
    directly usable as ``model.pretrained`` (only the ``backbone.*`` keys are read).

    Args:
        backbone: The feature extractor, ``[B, C, H, W] -> [B, D]``.
        heads: Modules on the features, by attribute name, registered in this order.
    """

    def __init__(self, backbone: Backbone, heads: dict[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        for name, head in (heads or {}).items():
            self.add_module(name, head)
        self.frozen_blocks = 0

    def freeze_blocks(self, n: int) -> None:
        """Fix the first ``n`` of ``backbone.blocks``: their parameters get no gradient and
        their BatchNorm layers keep their running statistics (eval mode) even while the rest
        trains, so the features they compute do not change at all."""
        blocks = self.backbone.blocks
        if not 0 <= n <= len(blocks):
            raise ValueError(f"cannot freeze {n} blocks of a backbone with {len(blocks)}")
        for block in blocks[:n]:
            block.requires_grad_(False)
        self.frozen_blocks = n
        self.train(self.training)

    def train(self, mode: bool = True) -> PretrainModel:
        super().train(mode)
        for block in self.backbone.blocks[: self.frozen_blocks]:
            block.train(False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` images -> ``[B, D]`` backbone features."""
        return self.backbone(x)


class SupervisedModel(PretrainModel):
    """A backbone and a linear classifier over every training class (``backbone.*`` and
    ``classifier.*`` in its state dict).

    Args:
        backbone: The feature extractor, ``[B, C, H, W] -> [B, D]``.
        num_classes: Classes of the training split.
    """

    classifier: nn.Linear

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__(backbone, {"classifier": nn.Linear(backbone.out_dim, num_classes)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` images -> ``[B, num_classes]`` logits."""
        return self.classifier(self.backbone(x))


def cosine_lr(step: int, total: int, base: float) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``total``: ``base`` at 0, a
    half cosine down to 0 at ``total``."""
    return 0.5 * base * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def build_model(
    config: RunConfig, train_data: LabelledImages, *, load_pretrained: bool = True
) -> PretrainModel:
    """A fresh backbone (``model.backbone``, ``model.input_size``) with the heads of
    ``pretrain.objective``, seeded by the global torch RNG: for ``supervised`` a
    :class:`SupervisedModel` with a classifier over every class of ``train_data``.

    Args:
        config: The run config.
        train_data: Its channels and size fix the backbone's input, its number of classes
            the classifier's outputs (its labels are not read).
        load_pretrained: Load ``model.pretrained`` into the backbone (off when a checkpoint
            overwrites every weight anyway).

    Raises:
        ConfigError: Unknown backbone, one that does not take the data's image size, or
            ``model.pretrained`` cannot be loaded.
    """
    channels, size, _ = train_data.image_shape
    backbone = build_backbone(config, channels, size, load_weights=load_pretrained)
    if config.pretrain.objective == "supervised":
        return SupervisedModel(backbone, train_data.num_classes)
    heads = build_heads(config.pretrain, backbone.out_dim, train_data.num_classes)
    return PretrainModel(backbone, heads)


@dataclass(frozen=True)
class Position:
    """Where a run is: ``epoch`` epochs done, then ``batch`` batches of the next one."""

    epoch: int
    batch: int
    step: int
    best: dict[str, Any]
    train_time_s: float


class Pretrainer:
    """Pretraining's step (a batch of images, one SGD step on the loss of
    ``pretrain.objective``) for the :class:`TrainingLoop`, which it runs as :meth:`fit`.

    Each epoch visits ``len(train_data) // batch_size`` batches of a fresh seeded permutation
    (the remainder is left out of that epoch; a split smaller than a batch is one batch). The
    batch order of an epoch and each batch's augmentation depend on ``(seed, epoch, batch)``
    only, so step ``s`` is the same batch however the run got there.

    The objective (:mod:`metatl.training.objectives`) makes the network's input from the
    batch's images and scores the model's outputs; the training labels of the batch are
    gathered only for a :class:`~metatl.training.objectives.LabelledObjective`, so the
    self-supervised objectives never read one.

    Args:
        model: Backbone and the objective's heads (see :func:`build_model`); moved to the
            device.
        config: The run config; ``pretrain`` holds the loop's settings, ``train.val_*`` the
            validation episodes, ``train.log_every`` the logging period in steps.
        train_data: The source split; for a supervised objective every class is a target
            of the classifier.
        val_data: The split validation episodes are drawn from.
        run_dir: Where ``best.pt`` and ``last.pt`` are written.
        tracker: Receives ``train/*`` and ``val/*`` metrics at optimiser steps.
        fingerprint: What identifies the data (stored in ``last.pt``, checked on resume).
    """

    label = "pretrain"
    resume_command = "python -m metatl.pretrain"
    lr_key = "pretrain.lr"
    rate_name = "images_per_s"

    def __init__(
        self,
        model: PretrainModel,
        config: RunConfig,
        train_data: LabelledImages,
        val_data: LabelledImages,
        run_dir: Path,
        tracker: Tracker,
        fingerprint: dict[str, Any] | None = None,
    ) -> None:
        self.ranks = current_ranks()
        self.config, self.train_data, self.val_data = config, train_data, val_data
        self.device = resolve_device(config.device)
        # Channels-last convolutions are ~20% faster on CPU (oneDNN) and on recent GPUs.
        self.memory_format = (
            torch.channels_last if self.device.type in ("cpu", "cuda") else torch.preserve_format
        )
        self.model = model.to(self.device, memory_format=self.memory_format)
        broadcast_module(self.model, self.ranks)
        p = config.pretrain
        self.optimizer = torch.optim.SGD(
            [w for w in self.model.parameters() if w.requires_grad],
            lr=p.lr,
            momentum=p.momentum,
            weight_decay=p.weight_decay,
        )
        self.scaler = grad_scaler(self.device, config.precision)
        self.transform = ImageTransform(model.backbone.input_spec)
        self.augment = BatchAugment(p.augment, p.crop_padding)
        self.objective = build_objective(p, self.transform, self.augment)
        missing = [
            h for h in self.objective.heads if not isinstance(getattr(model, h, None), nn.Module)
        ]
        if missing:
            raise ConfigError(
                f"pretrain.objective={p.objective} trains the model's {' and '.join(missing)}, "
                "which this model lacks (metatl.training.pretrain.build_model builds it)"
            )
        self.batch_size = self.items_per_step = min(p.batch_size, len(train_data))
        seed_ranks(config.seed, self.ranks)
        self.batches_per_epoch = len(train_data) // self.batch_size
        self.total_steps = p.epochs * self.batches_per_epoch
        self._order: tuple[int, torch.Tensor] | None = None
        self.loop = TrainingLoop(self, config, run_dir, tracker, fingerprint)

    @property
    def progress(self) -> Position:
        loop = self.loop
        epoch, batch = divmod(loop.step, self.batches_per_epoch)
        return Position(epoch, batch, loop.step, dict(loop.best), loop.train_time_s)

    def fit(self, stop: StopRequest | None = None) -> dict[str, Any]:
        """Train from the current position to the last epoch (see :class:`TrainingLoop`).

        Validation follows every ``pretrain.val_every``-th epoch and the last; ``last.pt`` is
        written at the end of every epoch and every ``train.checkpoint_every`` steps.

        Returns:
            The best validation: ``{"accuracy", "ci95", "step", "epoch"}``.

        Raises:
            NonFiniteLossError: The loss became NaN or infinite (message names the step).
            Preempted: ``stop`` fired; ``last.pt`` is up to date.
        """
        return self.loop.run(stop)

    def resume(self, payload: dict[str, Any], source: str = "last.pt") -> None:
        """Continue from a ``last.pt`` payload (RNG states included: call this last)."""
        self.loop.resume_from(payload, source)

    # ---- the strategy ----------------------------------------------------------------------

    def batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``index`` of epoch ``epoch`` (0-based) as the objective's input, on the
        device.

        Returns:
            The network's input (for ``supervised``: the augmented images ``[B, C, S, S]``,
            float, normalised, at the backbone's input size) and the batch's image indices
            into ``train_data`` (int64 ``[B]``).
        """
        if self._order is None or self._order[0] != epoch:
            generator = derived_generator(self.config.seed, _ORDER, epoch)
            self._order = (epoch, torch.randperm(len(self.train_data), generator=generator))
        items = self._order[1][index * self.batch_size : (index + 1) * self.batch_size]
        keys: tuple[int, ...] = (self.config.seed, _AUGMENT, epoch, index)
        if self.ranks.active:  # this rank's block of the batch, augmented by its own stream
            block = self.ranks.shard(len(items))
            items, keys = items[block.start : block.stop], (*keys, self.ranks.rank)
        generator = derived_generator(*keys)
        inputs = self.objective.inputs(self.train_data.images[items], generator)
        inputs = inputs.to(self.device, non_blocking=True).contiguous(
            memory_format=self.memory_format
        )
        return inputs, items

    def train_step(self, step: int) -> dict[str, float]:
        """Optimiser step ``step`` (1-based) at its cosine learning rate; ``{"loss",
        "accuracy", "lr"}``. Raises :class:`NonFiniteLoss` before any update."""
        lr = self.set_learning_rate(step)
        inputs, items = self.batch(*divmod(step - 1, self.batches_per_epoch))
        objective = self.objective
        self.model.train()
        with autocast(self.device, self.config.precision):
            outputs = objective.forward(self.model, inputs)
        if isinstance(objective, LabelledObjective):
            labels = self.train_data.labels[items].to(self.device, non_blocking=True)
            loss, accuracy = objective.criterion(outputs, labels)
        else:  # learns from the images alone: no label is gathered
            loss, accuracy = objective.criterion(outputs)
        if self.ranks.active:
            return self._optimise_across_ranks(loss, accuracy, len(items)) | {"lr": lr}
        return {"loss": self.optimise(loss), "accuracy": accuracy, "lr": lr}

    def set_learning_rate(self, step: int) -> float:
        """Set and return the cosine learning rate of optimiser step ``step`` (1-based)."""
        lr = cosine_lr(step - 1, self.total_steps, self.config.pretrain.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def optimise(self, loss: torch.Tensor) -> float:
        """One optimiser step on ``loss`` (a scalar; scaled for fp16); its value.

        Raises:
            NonFiniteLoss: The loss is NaN or infinite; nothing was updated.
        """
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLoss(value)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return value

    def _optimise_across_ranks(
        self, loss: torch.Tensor, accuracy: float, images: int
    ) -> dict[str, float]:
        """:meth:`optimise` under torchrun, the DDP way: each rank's mean loss over its
        ``images`` weighted by its share of the batch, the gradients summed over the ranks,
        one step; BatchNorm statistics (each rank's from its own share) averaged.

        Raises:
            NonFiniteLoss: The loss is not finite on some rank; nothing was updated.
        """
        value, weight = float(loss.detach()), images / self.batch_size
        finite = math.isfinite(value)
        self.optimizer.zero_grad(set_to_none=True)
        if finite:
            self.scaler.scale(loss * weight).backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        extras = [value * weight if finite else 0.0, accuracy * weight, float(not finite)]
        total, accuracy, bad_ranks = sum_gradients(params, extras, self.ranks)
        if bad_ranks:
            raise NonFiniteLoss(value if not finite else float("nan"))
        average_buffers(self.model, self.ranks)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"loss": total, "accuracy": accuracy}

    def where(self, step: int) -> str:
        epoch, batch = divmod(step - 1, self.batches_per_epoch)
        return f" (epoch {epoch + 1}, batch {batch + 1} of {self.batches_per_epoch})"

    def _epoch_end(self, step: int) -> int | None:
        """The epoch (1-based) that ``step`` ends, or None mid-epoch."""
        epoch, batch = divmod(step, self.batches_per_epoch)
        return epoch if batch == 0 else None

    def log_due(self, step: int) -> bool:
        return step % self.config.train.log_every == 0 or self._epoch_end(step) is not None

    def validation_due(self, step: int) -> bool:
        epoch = self._epoch_end(step)
        p = self.config.pretrain
        return epoch is not None and (epoch % p.val_every == 0 or epoch == p.epochs)

    def checkpoint_due(self, step: int) -> bool:
        every = self.config.train.checkpoint_every
        return self._epoch_end(step) is not None or (bool(every) and step % every == 0)

    def log_extras(self, step: int) -> dict[str, float]:
        epoch, batch = divmod(step, self.batches_per_epoch)
        return {"train/epoch": epoch + batch / self.batches_per_epoch}

    def best_extras(self, step: int) -> dict[str, Any]:
        return {"epoch": step // self.batches_per_epoch}

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

    def state_dict(self) -> dict[str, Any]:
        epoch, batch = divmod(self.loop.step, self.batches_per_epoch)
        return {
            "kind": "pretrain",
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "batch": batch,
            "train_images": len(self.train_data),
        }

    def best_state(self) -> dict[str, Any]:
        return {"kind": "pretrain", "model": self.model.state_dict()}

    def load_state_dict(self, payload: dict[str, Any], source: str = "last.pt") -> None:
        """The strategy's part of a ``last.pt`` payload (see :meth:`resume` for all of it).

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


def run_pretraining(
    config: RunConfig,
    *,
    resume_dir: str | Path | None = None,
    data_root: str | None = None,
    stop: StopRequest | None = None,
    report: ReportWriter | None = None,
) -> RunResult:
    """Pretrain on the source split (by ``pretrain.objective``), then test the best
    backbone; all in one run directory.

    The test scores ``protonet`` (nearest class mean on the pretrained features), then
    ``test.methods``, then ``pixels`` if ``test.pixel_baseline``, on the fixed ``test``
    episodes. Data, episode shapes, the backbone and the methods are checked before the run
    directory is created. ``model.algorithm`` plays no part.

    Args:
        config: The run's config (ignored when resuming: the run's own is used).
        resume_dir: A run directory to continue from its ``last.pt``, in place; the result
            equals (bit for bit on CPU) that of a run never interrupted.
        data_root: Where the data is now, if not at ``data.root``; it must be the same data.
        stop: Polled after every step and episode (see :func:`run_experiment`).
        report: Writes ``report.md`` and the plots at the end.

    Raises:
        ConfigError: A bad setting (before anything is written).
        CheckpointError: ``resume_dir`` has no readable pretraining ``last.pt``, has
            finished, or the data changed.
        RunInUseError: Another process is writing to ``resume_dir``.
        NonFiniteLossError: The loss became NaN or infinite.
        Preempted: ``stop`` fired; ``last.pt`` is up to date.
    """
    with contextlib.ExitStack() as hold:
        start = check_run(
            hold, config, resume_dir=resume_dir, data_root=data_root, read_resume=_resume_point
        )
        config, splits = start.config, start.splits
        model, methods, eval_config = _build(start)
        objective = config.pretrain.objective
        kind = "" if objective == "supervised" else f"{objective.replace('+', '-')}-"
        prefix = f"pretrain-{kind}{config.model.backbone}-{config.data.dataset}"
        run = open_run(hold, start, Pretrainer.resume_command, stop, prefix)
        trainer = Pretrainer(
            model,
            config,
            splits["train"],
            splits["val"],
            run.run_dir,
            run.tracker,
            fingerprint=data_fingerprint(splits),
        )
        if start.resume is not None:
            trainer.resume(start.resume, str(run.run_dir / "last.pt"))
        logger.info(
            "run directory %s; objective %s; %d train classes (%d images), %d batches of %d "
            "per epoch; %s, %s",
            run.run_dir,
            objective,
            splits["train"].num_classes,
            len(splits["train"]),
            trainer.batches_per_epoch,
            trainer.batch_size,
            start.device,
            config.precision,
        )
        best_val = trainer.fit(run.stop)
        step, train_time = trainer.progress.step, trainer.progress.train_time_s
        learner = ProtoNet(model.backbone)
        test = test_best(run, model, learner, methods, splits["test"], eval_config, step)
        result = RunResult(run.run_dir, best_val, test)
        extra = {"kind": "pretrain", "train_time_s": train_time, "steps": step}
        finish_run(result, config, run.tracker, step, extra, report)
        return result


def _build(start: RunStart) -> tuple[PretrainModel, list[str], RunConfig]:
    """The model, the test methods and the config they are tested with (nearest class mean
    as ``protonet`` on the backbone), after checking every episode shape can be drawn."""
    config, splits = start.config, start.splits
    eval_config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, algorithm="protonet"),
        device=str(start.device),
    )
    t = config.train
    specs = [s for s in episode_specs(config) if s[0] == "test"]
    for name, spec in [("val", EpisodeSpec(t.val_way, t.val_shot, t.val_query)), *specs]:
        data = splits[name]
        EpisodeSampler(data.labels, spec, 0, 1, split=data.name, class_names=data.class_names)
    if len(splits["train"]) < 2:
        raise ConfigError(f"{splits['train'].name} has {len(splits['train'])} image(s); need 2+")
    batch, world = min(config.pretrain.batch_size, len(splits["train"])), current_ranks().world_size
    if batch < world:
        raise ConfigError(
            f"a batch of {batch} images cannot be split over {world} processes: raise "
            "pretrain.batch_size, or start fewer"
        )
    pixels = ["pixels"] if config.test.pixel_baseline else []
    methods = list(dict.fromkeys(["protonet", *config.test.methods, *pixels]))
    model = build_model(config, splits["train"], load_pretrained=start.resume is None)
    build_methods(methods, ProtoNet(model.backbone), eval_config)
    return model, methods, eval_config


def _resume_point(run_dir: Path) -> tuple[dict[str, Any], RunConfig]:
    """The ``last.pt`` payload of ``run_dir`` and the run's own config."""
    checkpoint = read_last_checkpoint(run_dir)
    if checkpoint.get("kind") != "pretrain":
        raise CheckpointError(
            f"{run_dir / 'last.pt'} is not a pretraining checkpoint (resume meta-training runs "
            "with python -m metatl.train --resume)"
        )
    return checkpoint, checkpoint_config(checkpoint, run_dir / "last.pt")
