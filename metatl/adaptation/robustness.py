"""Test-time adaptation against corruptions: few-shot accuracy by corruption and severity.

The images of a split (new classes, e.g. the glyph benchmark's ``test``) are corrupted
(:mod:`episodes.corruptions`: noise, blur, elastic, contrast; severities 1-5, 0 = clean). At
each, the source-trained model is used as it is (``source_only``), with its BatchNorm
statistics re-estimated on the corrupted images (``adabn``), or with TENT's entropy
minimisation of its normalisation parameters on them (``tent``, through the model's own
source classifier); each version's features then classify the same few-shot episodes by
nearest class mean. The corrupted images are the unlabelled test stream that test-time
adaptation sees (as in TENT); their labels only score the episodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from episodes import EpisodeSpec, LabelledImages, UnlabelledImages
from episodes.corruptions import CORRUPTIONS, corrupted
from metatl.adaptation.test_time import adabn, tent
from metatl.algorithms import ProtoNet
from metatl.training.data import ImageTransform
from metatl.training.evaluation import EvalResult, evaluate

__all__ = ["TEST_TIME_METHODS", "corruption_setting", "corruption_study"]

TEST_TIME_METHODS = ("source_only", "adabn", "tent")
FIVE_WAY_ONE_SHOT = EpisodeSpec(5, 1, 15)


def corruption_setting(kind: str, severity: int) -> str:
    """The row name of one corruption: ``"clean"`` at severity 0, else ``"<kind> <severity>"``."""
    return "clean" if severity == 0 else f"{kind} {severity}"


def corruption_study(
    backbone: nn.Module,
    classifier: nn.Module,
    data: LabelledImages,
    *,
    kinds: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = (0, 1, 2, 3, 4, 5),
    methods: Sequence[str] = TEST_TIME_METHODS,
    spec: EpisodeSpec = FIVE_WAY_ONE_SHOT,
    episodes: int = 300,
    seed: int = 0,
    tent_settings: dict[str, Any] | None = None,
    corruption_seed: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> dict[str, dict[str, EvalResult]]:
    """Few-shot accuracy of each test-time method at each corruption and severity.

    Args:
        backbone: The trained feature extractor, ``[B, C, H, W]`` -> ``[B, D]``; not changed.
        classifier: Its source classifier, ``[B, D]`` -> ``[B, K]`` (what TENT's entropy is
            of); not changed.
        data: The clean split; episodes are drawn from its corrupted copies.
        kinds: Corruptions (:data:`episodes.corruptions.CORRUPTIONS`).
        severities: 0 (clean, scored once) to 5.
        methods: Any of :data:`TEST_TIME_METHODS`.
        spec: Episode shape.
        episodes: Episodes per corruption and severity (the same indices everywhere).
        seed: Seed of the episodes.
        tent_settings: Keyword arguments of :func:`~metatl.adaptation.test_time.tent`
            (``lr``, ``batch_size``, ``epochs``, ``seed``).
        corruption_seed: Seed of the corruptions.
        device: Where to run.
        precision: Autocast precision.

    Returns:
        Setting (:func:`corruption_setting`) -> method -> result; every method of a setting
        scored on the same episodes.

    Raises:
        ValueError: An unknown method or corruption.
    """
    unknown = [m for m in methods if m not in TEST_TIME_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {TEST_TIME_METHODS}")
    transform = ImageTransform(backbone.input_spec)
    model = nn.Sequential(backbone, classifier).eval()
    kwargs: dict[str, Any] = {"device": device, "precision": precision}
    out: dict[str, dict[str, EvalResult]] = {}
    for kind in kinds:
        for severity in severities:
            setting = corruption_setting(kind, severity)
            if setting in out:
                continue
            images = corrupted(data, kind, severity, corruption_seed) if severity else data
            target = UnlabelledImages.from_labelled(images)
            variants = {}
            for method in methods:
                if method == "source_only":
                    variants[method] = model
                elif method == "adabn":
                    variants[method] = adabn(model, target, transform, **kwargs)
                else:
                    variants[method] = tent(
                        model, target, transform, **(tent_settings or {}), **kwargs
                    )
            learners = {name: ProtoNet(v[0]) for name, v in variants.items()}
            out[setting] = evaluate(learners, images, spec, episodes, seed, transform, **kwargs)
    return out
