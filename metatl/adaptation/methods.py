"""The training-time adaptation methods (``adapt.method``): what a step adds to the source
classification loss, from the features of an unlabelled target batch.

- ``source_only``: nothing; the target is never looked at during training (the control).
- ``dann``: a :class:`~metatl.adaptation.losses.DomainClassifier` behind a gradient-reversal
  layer tells source features from target ones; the reversed gradient makes the backbone's
  features of both domains indistinguishable (Ganin et al. 2016).
- ``mcc``: minimum class confusion on the target predictions (Jin et al. 2020). Chosen as the
  fourth method because it aligns *classes* rather than the marginal feature distribution:
  it needs no adversary and no extra network (stable, no extra hyper-parameter but a
  temperature), works on any classifier, and does not push target features of one class
  onto source features of another, which is how DANN's marginal alignment can hurt when the
  domains' class balance differs; on the digit and Office benchmarks it is among the
  strongest of the simple methods (pytorch-adapt and TLlib both ship it).

A method sees the source and target features ``[B, D]`` of one backbone pass over both
batches and the target logits; never a target label.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from metatl.adaptation.losses import (
    DomainClassifier,
    dann_coefficient,
    domain_loss,
    gradient_reversal,
    minimum_class_confusion,
)
from metatl.config import AdaptConfig

__all__ = ["DANN", "MCC", "METHODS", "AdaptationMethod", "SourceOnly", "build_method"]


class AdaptationMethod(ABC):
    """One ``adapt.method``.

    Args:
        settings: The ``adapt`` section of the run config.
    """

    name: ClassVar[str]
    uses_target: ClassVar[bool] = True  # False: the training step never reads a target image

    def __init__(self, settings: AdaptConfig) -> None:
        self.settings = settings

    def make_heads(self, dim: int) -> dict[str, nn.Module]:
        """Modules the method trains next to the backbone and classifier, by name."""
        return {}

    @abstractmethod
    def target_loss(
        self,
        model: nn.Module,
        source_features: torch.Tensor,
        target_features: torch.Tensor,
        target_logits: torch.Tensor,
        progress: float,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The method's loss term (float32 scalar, already weighted) and metrics to log.

        Args:
            model: The model, with the heads of :meth:`make_heads`.
            source_features: ``[B_s, D]``.
            target_features: ``[B_t, D]``.
            target_logits: ``[B_t, K]`` class logits of the target batch.
            progress: Fraction of training done, in [0, 1].
        """


class SourceOnly(AdaptationMethod):
    """The control: the source classification loss alone."""

    name = "source_only"
    uses_target = False

    def target_loss(self, model, source_features, target_features, target_logits, progress):
        return torch.zeros((), device=source_features.device), {}


class DANN(AdaptationMethod):
    """Domain-adversarial training: ``dann_weight`` times the domain classifier's loss on
    features passed through a gradient reversal of coefficient
    :func:`~metatl.adaptation.losses.dann_coefficient` (``dann_gamma``)."""

    name = "dann"

    def make_heads(self, dim: int) -> dict[str, nn.Module]:
        return {"domain_classifier": DomainClassifier(dim, self.settings.dann_hidden)}

    def target_loss(self, model, source_features, target_features, target_logits, progress):
        coefficient = dann_coefficient(progress, self.settings.dann_gamma)
        features = gradient_reversal(torch.cat([source_features, target_features]), coefficient)
        logits = model.domain_classifier(features)
        n = len(source_features)
        loss, accuracy = domain_loss(logits[:n], logits[n:])
        metrics = {"domain_loss": float(loss.detach()), "domain_accuracy": accuracy}
        return self.settings.dann_weight * loss, metrics | {"grl_coefficient": coefficient}


class MCC(AdaptationMethod):
    """``mcc_weight`` times minimum class confusion of the target logits at
    ``mcc_temperature``."""

    name = "mcc"

    def target_loss(self, model, source_features, target_features, target_logits, progress):
        loss = minimum_class_confusion(target_logits, self.settings.mcc_temperature)
        return self.settings.mcc_weight * loss, {"mcc_loss": float(loss.detach())}


_METHODS: dict[str, type[AdaptationMethod]] = {m.name: m for m in (SourceOnly, DANN, MCC)}
#: Every ``adapt.method`` (``metatl.config.load.CHOICES`` agrees).
METHODS = tuple(_METHODS)


def build_method(settings: AdaptConfig) -> AdaptationMethod:
    """The method ``settings.method`` names.

    Raises:
        ValueError: An unknown method.
    """
    try:
        return _METHODS[settings.method](settings)
    except KeyError:
        raise ValueError(
            f"adapt.method={settings.method!r}; choose one of: {', '.join(METHODS)}"
        ) from None
