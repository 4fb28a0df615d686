"""Build backbones and learners from a run config, checked before anything is written."""

from __future__ import annotations

import torch

from metatl.algorithms import Learner
from metatl.algorithms.registry import UnknownLearnerError, create_learner
from metatl.backbones import Backbone, WeightsError, create_backbone, load_pretrained
from metatl.config import ConfigError, RunConfig

__all__ = ["build_backbone", "build_learner"]

# Sizes tried when a backbone fails on the configured one; every registered backbone takes
# far less, so a failure at this size is not about the size.
PROBE_LIMIT = 512


def build_learner(
    run: RunConfig, in_channels: int, image_size: int, n_way: int | None = None
) -> Learner:
    """The configured learner on a freshly initialised (or ``model.pretrained``) backbone.

    Args:
        run: The run config: ``model`` chooses the learner; ``linear_probe``, ``finetune``
            hold those learners' settings.
        in_channels: Channels of the data (the backbone's input channels).
        image_size: Height and width the data are loaded at.
        n_way: Episode way, for learners with a fixed-size learned head.

    Raises:
        ConfigError: The backbone cannot take the input size, ``model.pretrained`` cannot
            be loaded, or meta-training (``train.steps > 0``) has no parameters to learn.
    """
    config = run.model
    learner = _learner(run, build_backbone(run, in_channels, image_size), n_way)
    if run.train.steps and not any(p.requires_grad for p in learner.parameters()):
        raise ConfigError(
            f"model.backbone={config.backbone} has no weights, so model.algorithm="
            f"{config.algorithm} has nothing to meta-train: use a backbone with weights "
            "(e.g. conv4), or train.steps=0 to score it as a baseline"
        )
    return learner


def build_backbone(
    run: RunConfig, in_channels: int, image_size: int, *, load_weights: bool = True
) -> Backbone:
    """``model.backbone`` at ``model.input_size`` (else ``image_size``), checked to take
    that size, then loaded with ``model.pretrained``.

    Args:
        run: The run config.
        in_channels: Channels of the data.
        image_size: Height and width the data are loaded at (``data.image_size``).
        load_weights: Load ``model.pretrained`` (off when a checkpoint overwrites every
            weight anyway).

    Raises:
        ConfigError: The backbone fails on an image of that size (naming
            ``model.input_size`` or ``data.image_size`` and the smallest size it takes), or
            ``model.pretrained`` cannot be loaded.
    """
    config = run.model
    size = config.input_size or image_size
    try:
        backbone = _fresh(config.backbone, in_channels, size)
    except RuntimeError as err:  # torch: the input shrank below a kernel or a pooling window
        raise _size_error(run, in_channels, size, err) from None
    if load_weights and config.pretrained:
        try:
            load_pretrained(backbone, config.pretrained)
        except WeightsError as err:
            raise ConfigError(f"model.pretrained={config.pretrained!r}: {err}") from None
    return backbone


def _fresh(name: str, in_channels: int, size: int) -> Backbone:
    """A freshly initialised backbone that has run one zero image of ``size`` (or raised)."""
    backbone = create_backbone(name, in_channels=in_channels, image_size=size)
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        backbone(torch.zeros(1, in_channels, size, size))
    backbone.train(was_training)
    return backbone


def _takes(name: str, in_channels: int, size: int) -> bool:
    try:
        _fresh(name, in_channels, size)
    except RuntimeError:
        return False
    return True


def _smallest_size(name: str, in_channels: int, size: int) -> int | None:
    """The smallest size above ``size`` the backbone takes (doubling, then bisecting), or
    None if it takes none up to :data:`PROBE_LIMIT`."""
    low, high = size, size
    while not _takes(name, in_channels, high):
        if high >= PROBE_LIMIT:
            return None
        low, high = high, min(2 * high, PROBE_LIMIT)
    while high - low > 1:  # low fails, high works
        middle = (low + high) // 2
        low, high = (low, middle) if _takes(name, in_channels, middle) else (middle, high)
    return high


def _size_error(run: RunConfig, in_channels: int, size: int, err: Exception) -> Exception:
    """A ConfigError naming the size key if a larger size works, else ``err`` itself."""
    name = run.model.backbone
    smallest = _smallest_size(name, in_channels, size)
    if smallest is None or smallest <= size:
        return err
    key = "model.input_size" if run.model.input_size else "data.image_size"
    other = "" if run.model.input_size else ", or set model.input_size (episodes are resized to it)"
    return ConfigError(
        f"{key}={size} is too small for model.backbone={name}, which takes {smallest} px and "
        f"up: raise it{other}"
    )


def _learner(run: RunConfig, backbone: Backbone, n_way: int | None) -> Learner:
    try:
        return create_learner(run.model.algorithm, backbone, run, n_way)
    except UnknownLearnerError as err:
        raise ConfigError(f"model.algorithm: {err}") from None
