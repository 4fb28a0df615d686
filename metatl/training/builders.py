"""Build learners from a run config."""

from __future__ import annotations

import dataclasses

from metatl.algorithms import MAML, MAML_VARIANTS, FineTune, Learner, LinearProbe, ProtoNet
from metatl.backbones import WeightsError, create_backbone
from metatl.config import ConfigError, RunConfig

__all__ = ["build_learner"]


def build_learner(
    run: RunConfig, in_channels: int, image_size: int, n_way: int | None = None
) -> Learner:
    """The configured learner on a freshly initialised backbone.

    Args:
        run: The run config: ``model`` chooses the learner; ``linear_probe``, ``finetune``
            hold those learners' settings.
        in_channels: Channels of the data (the backbone's input channels).
        image_size: Height and width the data are loaded at.
        n_way: Episode way, for learners with a fixed-size learned head.
    """
    config = run.model
    try:
        backbone = create_backbone(
            config.backbone,
            pretrained=config.pretrained or None,
            in_channels=in_channels,
            image_size=config.input_size or image_size,
        )
    except WeightsError as err:
        raise ConfigError(f"model.pretrained={config.pretrained!r}: {err}") from None
    if config.algorithm == "protonet":
        return ProtoNet(backbone, distance=config.distance, cosine_scale=config.cosine_scale)  # type: ignore[arg-type]
    if config.algorithm in MAML_VARIANTS:
        settings = dataclasses.asdict(config.maml) | MAML_VARIANTS[config.algorithm]
        return MAML(backbone, n_way=n_way if config.maml.head == "learned" else None, **settings)
    if config.algorithm == "linear":
        return LinearProbe(backbone, **dataclasses.asdict(run.linear_probe))
    if config.algorithm == "finetune":
        return FineTune(backbone, **dataclasses.asdict(run.finetune))
    raise ConfigError(f"model.algorithm={config.algorithm!r} has no builder")
