"""``python -m metatl.adapt``: one unsupervised domain-adaptation run, from the config to the
report.

1. Check everything that can fail (data, the target split, the backbone, the methods).
2. Train (:class:`~metatl.adaptation.trainer.Adapter`): source classification plus
   ``adapt.method`` on unlabelled target batches; ``best.pt`` chosen by source validation
   accuracy; label-free validators and the oracle's target accuracy recorded per validation.
3. Load ``best.pt`` and make the variants: the model as trained, then each of
   ``adapt.test_time`` applied to it (AdaBN, TENT) with the unlabelled target images.
4. Score every variant on the same labelled target test images (per-image accuracy ± 95% CI,
   paired) and, with ``adapt.fewshot_split``, on the same few-shot episodes of that split
   (nearest class mean on each variant's features): "adapt without labels, then learn new
   classes from 1-5 examples".
5. ``results.json`` (with the model-selection table), ``selection.md``, ``report.md``.

The target labels of ``data.test_split`` are read only in step 4 and by the oracle; the
target images the methods see come as :class:`~episodes.UnlabelledImages`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from episodes import EpisodeSampler, EpisodeSpec, LabelledImages, UnlabelledImages
from metatl.adaptation.methods import build_method
from metatl.adaptation.selection import format_selection, select_checkpoints
from metatl.adaptation.test_time import adabn, batch_norm_layers, normalisation_parameters, tent
from metatl.adaptation.trainer import Adapter, AdaptModel
from metatl.adaptation.validators import correct_predictions, predict_logits
from metatl.algorithms import ProtoNet
from metatl.atomic_io import write_text_atomic
from metatl.config import ConfigError, RunConfig
from metatl.training.builders import build_backbone
from metatl.training.checkpoint import CheckpointError, checkpoint_config, load_checkpoint
from metatl.training.data import ImageTransform, load_split
from metatl.training.distributed import single_process
from metatl.training.evaluation import EvalResult, evaluate
from metatl.training.lifecycle import RunStart, check_run, open_run
from metatl.training.meta_train import ReportWriter, RunResult, finish_run
from metatl.training.preemption import StopRequest
from metatl.training.run_dir import data_fingerprint, read_last_checkpoint

__all__ = ["AdaptResult", "adapted_variants", "run_adaptation", "variant_name"]

logger = logging.getLogger(__name__)

TARGET_SETTING = "target test images"


@dataclasses.dataclass
class AdaptResult(RunResult):
    """A :class:`~metatl.training.meta_train.RunResult` with the model-selection table.

    Attributes:
        selection: Rows of :func:`~metatl.adaptation.selection.select_checkpoints` as dicts.
    """

    selection: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def variant_name(method: str, test_time: str | None) -> str:
    """``source_only``, ``adabn``, ``tent``, ``dann``, ``dann+adabn``, ... ."""
    if test_time is None:
        return method
    return test_time if method == "source_only" else f"{method}+{test_time}"


def adapted_variants(
    classifier: nn.Module,
    target: UnlabelledImages,
    transform: ImageTransform,
    config: RunConfig,
    device: torch.device,
) -> dict[str, nn.Module]:
    """The trained classifier and each of ``adapt.test_time`` applied to it, by
    :func:`variant_name`; the classifier itself is not changed."""
    a = config.adapt
    variants = {variant_name(a.method, None): classifier}
    for name in a.test_time:
        kwargs: dict[str, Any] = {"device": device, "precision": config.precision}
        if name == "adabn":
            adapted = adabn(classifier, target, transform, **kwargs)
        else:
            adapted = tent(
                classifier,
                target,
                transform,
                lr=a.tent_lr,
                batch_size=a.tent_batch_size,
                epochs=a.tent_epochs,
                seed=config.seed,
                **kwargs,
            )
        variants[variant_name(a.method, name)] = adapted
    return variants


def run_adaptation(
    config: RunConfig,
    *,
    resume_dir: str | Path | None = None,
    data_root: str | None = None,
    stop: StopRequest | None = None,
    report: ReportWriter | None = None,
) -> AdaptResult:
    """Adapt from the source to the target domain and score every variant (see the module).

    Args:
        config: The run's config (ignored when resuming: the run's own is used).
        resume_dir: A run directory to continue from its ``last.pt``.
        data_root: Where the data is now, if not at ``data.root``.
        stop: Polled after every step.
        report: Writes ``report.md`` and the plots at the end.

    Raises:
        ConfigError: A bad setting (before anything is written).
        CheckpointError: ``resume_dir`` has no adaptation ``last.pt``, or the data changed.
        NonFiniteLossError: The loss became NaN or infinite.
        Preempted: ``stop`` fired; ``last.pt`` is up to date.
    """
    single_process("python -m metatl.adapt")
    with contextlib.ExitStack() as hold:
        start = check_run(
            hold, config, resume_dir=resume_dir, data_root=data_root, read_resume=_resume_point
        )
        config = start.config
        source_train, source_val, target_test = (start.splits[s] for s in ("train", "val", "test"))
        target, fewshot = _target_data(start)
        model = _build(start, fewshot)
        prefix = f"adapt-{config.adapt.method}-{config.model.backbone}-{config.data.dataset}"
        run = open_run(hold, start, Adapter.resume_command, stop, prefix)
        transform = ImageTransform(model.backbone.input_spec)
        device = start.device

        def oracle(classifier: nn.Module) -> float:
            return _target_accuracy(classifier, target_test, transform, config, device).mean

        fingerprint = data_fingerprint(start.splits)  # the target's count: in last.pt
        adapter = Adapter(
            model,
            config,
            source_train,
            source_val,
            target,
            run.run_dir,
            run.tracker,
            fingerprint=fingerprint,
            oracle=oracle,
        )
        if start.resume is not None:
            adapter.resume(start.resume, str(run.run_dir / "last.pt"))
        logger.info(
            "run directory %s; %s, test-time %s; %d source images of %d classes, %d target "
            "images; %d batches of %d per epoch; %s, %s",
            run.run_dir,
            config.adapt.method,
            ", ".join(config.adapt.test_time) or "none",
            len(source_train),
            source_train.num_classes,
            len(target),
            adapter.batches_per_epoch,
            adapter.batch_size,
            device,
            config.precision,
        )
        best_val = adapter.fit(run.stop)
        step, train_time = adapter.progress.step, adapter.progress.train_time_s
        if run.stop:
            raise run.preempted(step)
        model.load_state_dict(load_checkpoint(run.run_dir / "best.pt")["model"])
        variants = adapted_variants(model.classify(), target, transform, config, device)
        test = {
            TARGET_SETTING: {
                name: _target_accuracy(v, target_test, transform, config, device)
                for name, v in variants.items()
            }
        }
        if fewshot is not None:
            test |= _fewshot(variants, fewshot, transform, config, device)
        selection = select_checkpoints(adapter.history)
        result = AdaptResult(
            run.run_dir, best_val, test, selection=[dataclasses.asdict(s) for s in selection]
        )
        write_text_atomic(
            run.run_dir / "selection.md",
            "# Model selection without target labels\n\n" + format_selection(selection) + "\n",
        )
        write_text_atomic(
            run.run_dir / "history.json", json.dumps(adapter.history, indent=2) + "\n"
        )
        extra = {
            "kind": "adapt",
            "train_time_s": train_time,
            "steps": step,
            "selection": result.selection,
        }
        finish_run(result, config, run.tracker, step, extra, report)
        return result


def _target_accuracy(
    classifier: nn.Module,
    data: LabelledImages,
    transform: ImageTransform,
    config: RunConfig,
    device: torch.device,
) -> EvalResult:
    """Per-image accuracy on labelled target images (mean ± 95% CI over images)."""
    logits = predict_logits(
        classifier, data.images, transform, device=device, precision=config.precision
    )
    correct = correct_predictions(logits, data.labels).tolist()
    return EvalResult.from_accuracies(correct, f"{data.name} images")


def _fewshot(
    variants: dict[str, nn.Module],
    data: LabelledImages,
    transform: ImageTransform,
    config: RunConfig,
    device: torch.device,
) -> dict[str, dict[str, EvalResult]]:
    """Nearest class mean on each variant's features, on the same few-shot episodes."""
    t = config.test
    learners = {name: ProtoNet(_backbone_of(v)) for name, v in variants.items()}
    out = {}
    for shot in t.shots:
        spec = EpisodeSpec(t.way, shot, t.query)
        setting = f"{t.way}-way {shot}-shot {data.name}"
        out[setting] = evaluate(
            learners,
            data,
            spec,
            t.episodes,
            t.seed,
            transform,
            device=device,
            precision=config.precision,
        )
    return out


def _backbone_of(classifier: nn.Module) -> nn.Module:
    """The backbone of a variant (``nn.Sequential(backbone, classifier)``)."""
    return classifier[0]  # type: ignore[index]


def _target_data(start: RunStart) -> tuple[UnlabelledImages, LabelledImages | None]:
    """The target images without their labels, and the few-shot split (or None)."""
    config = start.config
    a, data = config.adapt, config.data
    names = {data.train_split, data.val_split, data.test_split}
    if a.target_split in names:
        raise ConfigError(
            f"adapt.target_split={a.target_split!r} is also a data.*_split: the unlabelled "
            "target images must be a split of their own (e.g. target_train)"
        )
    target = UnlabelledImages.from_labelled(load_split(data, a.target_split))
    expected = start.splits["train"].image_shape
    if target.image_shape != expected:
        raise ConfigError(
            f"adapt.target_split={a.target_split!r} holds images of shape {target.image_shape}, "
            f"the source {expected}"
        )
    if len(target) < 2:
        raise ConfigError(f"{target.name} has {len(target)} image(s); adaptation needs 2+")
    if a.score_images == 1:
        raise ConfigError(
            "adapt.score_images=1: the validators (SND) compare target images with each "
            "other; use 2 or more, or 0 for all of them"
        )
    fewshot = load_split(data, a.fewshot_split) if a.fewshot_split else None
    return target, fewshot


def _build(start: RunStart, fewshot: LabelledImages | None) -> AdaptModel:
    """The model (seeded), after checking the domains share their classes, the few-shot
    episodes can be drawn and the test-time methods find what they adapt."""
    config, splits = start.config, start.splits
    source = splits["train"]
    for name in ("val", "test"):
        if splits[name].class_names != source.class_names:
            raise ConfigError(
                f"{splits[name].name} does not have the classes of {source.name} in the same "
                "order: domain adaptation needs the same classes in both domains"
            )
    if fewshot is not None:
        t = config.test
        for shot in t.shots:
            spec = EpisodeSpec(t.way, shot, t.query)
            EpisodeSampler(fewshot.labels, spec, 0, 1, split=fewshot.name)
    channels, size, _ = source.image_shape
    backbone = build_backbone(config, channels, size, load_weights=start.resume is None)
    method = build_method(config.adapt)
    model = AdaptModel(backbone, source.num_classes, method.make_heads(backbone.out_dim))
    if "adabn" in config.adapt.test_time and not batch_norm_layers(backbone):
        raise ConfigError(
            f"adapt.test_time has adabn, but {config.model.backbone} has no BatchNorm layer"
        )
    if "tent" in config.adapt.test_time and not normalisation_parameters(backbone):
        raise ConfigError(
            f"adapt.test_time has tent, but {config.model.backbone} has no normalisation layer "
            "with a scale and shift"
        )
    return model


def _resume_point(run_dir: Path) -> tuple[dict[str, Any], RunConfig]:
    checkpoint = read_last_checkpoint(run_dir)
    if checkpoint.get("kind") != "adapt":
        raise CheckpointError(
            f"{run_dir / 'last.pt'} is not an adaptation checkpoint (resume it with the command "
            "that made it)"
        )
    return checkpoint, checkpoint_config(checkpoint, run_dir / "last.pt")
