"""Training with an unlabelled target domain on the one training loop.

:class:`Adapter` is the :class:`~metatl.training.pretrain.Pretrainer` (supervised
whole-class training: SGD, cosine rate, seeded augmented batches, exact resume) with a target
batch next to each source batch: one backbone pass over both, the source cross-entropy plus
the ``adapt.method`` term (:mod:`metatl.adaptation.methods`). The target batch comes from an
:class:`~episodes.UnlabelledImages`, which has no labels to read.

Validation is the accuracy on the labelled source validation images (best.pt is chosen by
it: a label-free criterion as far as the target goes), and next to it the label-free
validators of the target predictions (:mod:`metatl.adaptation.validators`). An *oracle*
(target accuracy, computed by the caller from labelled target images) may be given: it is
recorded in the history for the model-selection report and never chooses anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from episodes import LabelledImages, UnlabelledImages
from metatl.adaptation.methods import AdaptationMethod, build_method
from metatl.adaptation.validators import (
    correct_predictions,
    predict_logits,
    prediction_entropy,
    soft_neighbourhood_density,
)
from metatl.backbones import Backbone
from metatl.config import ConfigError, RunConfig
from metatl.tracking import Tracker
from metatl.training.augment import derived_generator
from metatl.training.checkpoint import CheckpointError
from metatl.training.device import autocast
from metatl.training.evaluation import EvalResult
from metatl.training.preemption import Interrupted, StopRequest
from metatl.training.pretrain import Pretrainer, SupervisedModel

__all__ = ["AdaptModel", "Adapter", "Oracle"]

Oracle = Callable[[nn.Module], float]
"""Model (eval mode) -> its accuracy on labelled target images; for reports only."""

# derived_generator streams (after the Pretrainer's 0 and 1): target order, target augment,
# the sample of target images the validators score.
_TARGET_ORDER, _TARGET_AUGMENT, _SCORE_SAMPLE = 2, 3, 4


class AdaptModel(SupervisedModel):
    """A backbone, a linear classifier over the shared classes, and the adaptation method's
    heads (``domain_classifier`` for DANN). ``forward`` gives the class logits.

    Args:
        backbone: ``[B, C, H, W] -> [B, D]``.
        num_classes: Classes shared by the domains.
        heads: The method's extra modules, by name.
    """

    def __init__(
        self, backbone: Backbone, num_classes: int, heads: dict[str, nn.Module] | None = None
    ) -> None:
        super().__init__(backbone, num_classes)
        for name, head in (heads or {}).items():
            self.add_module(name, head)

    def classify(self) -> nn.Module:
        """The classifier alone (backbone + linear head, no adaptation heads): what is scored
        and what the test-time methods adapt."""
        return nn.Sequential(self.backbone, self.classifier)


class Adapter(Pretrainer):
    """The adaptation step for the :class:`~metatl.training.loop.TrainingLoop`.

    Args:
        model: An :class:`AdaptModel` with ``method``'s heads.
        config: The run config (``pretrain.*`` the loop, ``adapt.*`` the method).
        source_train: Labelled source images.
        source_val: Labelled source images for validation.
        target: Unlabelled target images.
        run_dir: Where ``best.pt`` and ``last.pt`` go.
        tracker: Receives ``train/*``, ``val/*`` and ``oracle/*``.
        fingerprint: Identifies the data (checked on resume).
        oracle: Target accuracy of a model, recorded at every validation (never used to
            choose).
    """

    label = "adapt"
    resume_command = "python -m metatl.adapt"

    def __init__(
        self,
        model: AdaptModel,
        config: RunConfig,
        source_train: LabelledImages,
        source_val: LabelledImages,
        target: UnlabelledImages,
        run_dir: Path,
        tracker: Tracker,
        fingerprint: dict[str, Any] | None = None,
        oracle: Oracle | None = None,
    ) -> None:
        if not isinstance(target, UnlabelledImages):
            raise TypeError(
                f"the target domain must come as UnlabelledImages, not {type(target).__name__}"
            )
        if config.pretrain.objective != "supervised":
            raise ConfigError(
                f"python -m metatl.adapt trains a classifier on the source labels: "
                f"pretrain.objective must be supervised, not {config.pretrain.objective}"
            )
        super().__init__(model, config, source_train, source_val, run_dir, tracker, fingerprint)
        self.method: AdaptationMethod = build_method(config.adapt)
        self.target, self.oracle = target, oracle
        size = config.adapt.target_batch_size or config.pretrain.batch_size
        self.target_batch_size = min(size, len(target))
        self.target_batches = len(target) // self.target_batch_size
        n_score = config.adapt.score_images or len(target)
        if n_score < len(target):
            generator = derived_generator(config.seed, _SCORE_SAMPLE)
            sample = torch.randperm(len(target), generator=generator)
            self.score_images = target.images[sample[:n_score].sort().values]
        else:
            self.score_images = target.images
        self.history: list[dict[str, float]] = []
        self._target_order: tuple[int, torch.Tensor] | None = None

    def target_batch(self, step: int) -> torch.Tensor:
        """The target batch of step ``step`` (1-based): augmented, normalised, on the device,
        ``[B_t, C, S, S]``; the target images are cycled in seeded permutations."""
        cycle, index = divmod(step - 1, self.target_batches)
        if self._target_order is None or self._target_order[0] != cycle:
            generator = derived_generator(self.config.seed, _TARGET_ORDER, cycle)
            self._target_order = (cycle, torch.randperm(len(self.target), generator=generator))
        size = self.target_batch_size
        items = self._target_order[1][index * size : (index + 1) * size]
        generator = derived_generator(self.config.seed, _TARGET_AUGMENT, step)
        inputs = self.objective.inputs(self.target[items], generator)
        return inputs.to(self.device, non_blocking=True).contiguous(
            memory_format=self.memory_format
        )

    def train_step(self, step: int) -> dict[str, float]:
        """Step ``step``: the source cross-entropy plus the method's target term."""
        lr = self.set_learning_rate(step)
        source, items = self.batch(*divmod(step - 1, self.batches_per_epoch))
        labels = self.train_data.labels[items].to(self.device, non_blocking=True)
        model, method = self.model, self.method
        model.train()
        with autocast(self.device, self.config.precision):
            if method.uses_target:
                target = self.target_batch(step)
                if self.config.adapt.domain_batches == "joint":
                    features = model.backbone(torch.cat([source, target]))
                else:  # each domain's BatchNorm statistics its own
                    features = torch.cat([model.backbone(source), model.backbone(target)])
                source_features, target_features = features[: len(source)], features[len(source) :]
                logits = model.classifier(features)
                source_logits, target_logits = logits[: len(source)], logits[len(source) :]
                progress = (step - 1) / max(self.total_steps - 1, 1)
                extra, metrics = method.target_loss(
                    model, source_features, target_features, target_logits, progress
                )
            else:
                source_logits = model(source)
                extra, metrics = torch.zeros((), device=self.device), {}
        classification, accuracy = self.objective.criterion((source_logits,), labels)
        value = self.optimise(classification + extra)
        return {"loss": value, "accuracy": accuracy, "lr": lr} | metrics

    def validate(self, stop: StopRequest | None = None) -> EvalResult:
        """Accuracy on the source validation images (what best.pt is chosen by); records the
        label-free validators of the target predictions and the oracle in :attr:`history`.

        Raises:
            Interrupted: ``stop`` fired during it.
        """
        classifier = self.model.classify()
        kwargs = {"device": self.device, "precision": self.config.precision}
        logits = predict_logits(classifier, self.val_data.images, self.transform, **kwargs)
        correct = correct_predictions(logits, self.val_data.labels).tolist()
        result = EvalResult.from_accuracies(correct, f"{self.val_data.name} images")
        if stop:
            raise Interrupted(stop.signal_name or "a stop request")
        target_logits = predict_logits(classifier, self.score_images, self.transform, **kwargs)
        row = {
            "step": float(self.loop.step),
            "source_val_accuracy": result.mean,
            "target_entropy": prediction_entropy(target_logits),
            "target_snd": soft_neighbourhood_density(
                target_logits, self.config.adapt.snd_temperature
            ),
        }
        if self.oracle is not None:
            row["oracle_target_accuracy"] = self.oracle(classifier)
        self.history.append(row)
        logged = {f"val/{k}": v for k, v in row.items() if k.startswith("target_")}
        if "oracle_target_accuracy" in row:
            logged["oracle/target_accuracy"] = row["oracle_target_accuracy"]
        self.loop.tracker.log(logged, self.loop.step)
        return result

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {
            "kind": "adapt",
            "history": [dict(r) for r in self.history],
            "target_images": len(self.target),
        }

    def best_state(self) -> dict[str, Any]:
        return {"kind": "adapt", "model": self.model.state_dict()}

    def load_state_dict(self, payload: dict[str, Any], source: str = "last.pt") -> None:
        """The adapter's part of a ``last.pt`` payload.

        Raises:
            CheckpointError: Not an adaptation checkpoint, or written for other data.
        """
        if payload.get("kind") != "adapt" or "history" not in payload:
            raise CheckpointError(f"{source} is not a python -m metatl.adapt checkpoint")
        if payload.get("target_images") != len(self.target):
            raise CheckpointError(
                f"{source} was written for {payload.get('target_images')} target images; "
                f"{self.target.name} now has {len(self.target)}"
            )
        super().load_state_dict(payload, source)
        self.history = [dict(r) for r in payload["history"]]
