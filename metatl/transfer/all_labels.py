"""The "all labels" budget of ``compare``: every method trained on a whole training split.

Where the target has a training split of its own (Fashion-MNIST's 60,000 images), the
question "small or large data?" is answered by measuring the methods with all of it next to
their few-shot scores. Each method is trained on every image of ``train`` and scored on
every image of ``test`` (the same classes), so the results of one budget are paired per
image:

- probes: nearest class mean and logistic regression (the linear probe's fit, same
  settings) on the frozen features of every block, computed once per image;
- ``finetune@N``: the source backbone with a new classifier, its lower blocks frozen (weights
  and BatchNorm statistics) and its top N blocks trained with the head, by the one training
  loop with the ``pretrain`` settings; ``scratch``: the same recipe from a random
  initialisation, every block trained;
- ``pixels/ncm``: nearest class mean on raw pixels.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from episodes import LabelledImages
from metatl.algorithms.linear_probe import fit_linear_head
from metatl.backbones import Backbone, create_backbone
from metatl.config import ConfigError, RunConfig, config_to_dict
from metatl.functional import squared_euclidean_distance
from metatl.tracking import create_tracker
from metatl.training.device import resolve_device
from metatl.training.evaluation import EvalResult
from metatl.training.preemption import StopRequest
from metatl.training.pretrain import SupervisedModel
from metatl.transfer.compare import PIXELS, SCRATCH, finetune_depths
from metatl.transfer.features import block_features
from metatl.transfer.layers import TaskTrainer, in_study_group
from metatl.transfer.sources import Source

__all__ = ["all_labels_results", "check_same_classes"]


def check_same_classes(train: LabelledImages, test: LabelledImages) -> None:
    """The all-labels budget trains on ``train`` and tests on ``test``: one set of classes.

    Raises:
        ConfigError: They differ (the message names the splits and the fix).
    """
    if list(train.class_names) != list(test.class_names):
        raise ConfigError(
            f"compare.all_labels trains on {train.name} ({train.num_classes} classes) and tests "
            f"on {test.name} ({test.num_classes} classes), which need the same classes; a "
            "few-shot benchmark has disjoint classes per split: set compare.all_labels=false"
        )


def all_labels_results(
    sources: Sequence[Source],
    train: LabelledImages,
    test: LabelledImages,
    config: RunConfig,
    out_dir: Path,
    *,
    stop: StopRequest | None = None,
) -> dict[str, EvalResult]:
    """Every method of ``compare`` trained on all of ``train``, scored on each image of
    ``test``.

    Args:
        sources: The source models.
        train: The target's training split.
        test: Images of the same classes to score on.
        config: The run config (``compare``, ``linear_probe``, ``pretrain``, ``device``,
            ``precision``, ``tracking``).
        out_dir: The comparison's directory; trained networks go to ``runs/<method>``.
        stop: Polled between batches (SIGTERM/SIGINT).

    Returns:
        Method name -> :class:`EvalResult` over ``test``'s images (0/1 each, in order).
    """
    check_same_classes(train, test)
    settings = config.compare
    channels, size, _ = train.image_shape
    pixels = create_backbone("pixels", in_channels=channels, image_size=size)
    results = {PIXELS: _nearest_mean(*_features(pixels, train, test, config)[0], test)}
    for source in sources:
        results |= _probes(source, train, test, config)
        if settings.finetune:
            for n in finetune_depths(source.n_blocks, settings.finetune_blocks):
                method = f"{source.name}/finetune@{n}"
                torch.manual_seed(settings.seed)  # the new classifier's initial weights
                model = SupervisedModel(copy.deepcopy(source.backbone), train.num_classes)
                model.freeze_blocks(source.n_blocks - n)
                results[method] = _train(model, method, train, test, config, out_dir, stop)
    if settings.scratch:
        torch.manual_seed(settings.seed)
        fresh = create_backbone(settings.scratch, in_channels=channels, image_size=size)
        model = SupervisedModel(fresh, train.num_classes)
        results[SCRATCH] = _train(model, SCRATCH, train, test, config, out_dir, stop)
    return results


def _features(
    backbone: Backbone, train: LabelledImages, test: LabelledImages, config: RunConfig
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per block: (train features, train labels, test features)."""
    device = resolve_device(config.device)
    train_f = block_features(backbone, train.images, device=device)
    test_f = block_features(backbone, test.images, device=device)
    return [(a, train.labels, b) for a, b in zip(train_f, test_f, strict=True)]


def _probes(
    source: Source, train: LabelledImages, test: LabelledImages, config: RunConfig
) -> dict[str, EvalResult]:
    results = {}
    probes = config.compare.probes
    for k, (train_f, labels, test_f) in enumerate(
        _features(source.backbone, train, test, config), start=1
    ):
        if "ncm" in probes:
            results[f"{source.name}/ncm@{k}"] = _nearest_mean(train_f, labels, test_f, test)
        if "linear" in probes:
            head = fit_linear_head(
                train_f, labels, train.num_classes, **dataclasses.asdict(config.linear_probe)
            )
            correct = head.logits(test_f).argmax(1) == test.labels
            results[f"{source.name}/linear@{k}"] = _result(correct, test)
    return results


def _nearest_mean(
    train_f: torch.Tensor, labels: torch.Tensor, test_f: torch.Tensor, test: LabelledImages
) -> EvalResult:
    classes = int(labels.max()) + 1
    sums = torch.zeros(classes, train_f.shape[1], dtype=torch.float64)
    sums.index_add_(0, labels, train_f.double())
    means = sums / torch.bincount(labels, minlength=classes).clamp(min=1).unsqueeze(1)
    predicted = squared_euclidean_distance(test_f.double(), means).argmin(1)
    return _result(predicted == test.labels, test)


def _result(correct: torch.Tensor, test: LabelledImages) -> EvalResult:
    return EvalResult.from_accuracies(correct.double().tolist(), _image_set(test))


def _image_set(test: LabelledImages) -> str:
    return f"{test.name} ({len(test)} images)"


def _train(
    model: SupervisedModel,
    method: str,
    train: LabelledImages,
    test: LabelledImages,
    config: RunConfig,
    out_dir: Path,
    stop: StopRequest | None,
) -> EvalResult:
    """Train ``model`` on all of ``train`` (the ``pretrain`` settings) and score it on
    ``test``; the network is kept in ``out_dir/runs/<method>``."""
    run_dir = out_dir / "runs" / method.replace("/", "-")
    run_dir.mkdir(parents=True, exist_ok=True)
    group = out_dir.name
    tracked = dataclasses.replace(
        in_study_group(config, group, f"{group}/{method}", "compare"), name=""
    )
    with contextlib.closing(create_tracker(tracked, run_dir)) as tracker:
        tracker.log_config(config_to_dict(tracked))
        trainer = TaskTrainer(model, tracked, train, test, run_dir, tracker)
        trainer.fit(stop)
        scored = trainer.validate(stop)
    return dataclasses.replace(scored, episode_set=_image_set(test))
