"""What pretraining minimises: the ``pretrain.objective`` choices.

- ``supervised``: cross-entropy over every class of the training split (the "Baseline").
- ``rotation``: every image is shown at 0, 90, 180 and 270 degrees and a head on the
  backbone predicts which (Gidaris et al. 2018, "Unsupervised Representation Learning by
  Predicting Image Rotations").
- ``simclr``: two randomly augmented views of every image; a projection head maps them to
  vectors on which NT-Xent makes each view pick its twin out of the batch (Chen et al. 2020,
  "A Simple Framework for Contrastive Learning of Visual Representations").
- ``supervised+rotation``: the supervised loss on the upright images plus
  ``pretrain.rotation_weight`` times the rotation loss on all four turns, from one pass of the
  backbone (Gidaris et al. 2019, "Boosting Few-Shot Visual Learning with Self-Supervision").

An objective turns a batch of training images into the network's input
(:meth:`Objective.inputs`), runs the model on it (:meth:`Objective.forward`, under autocast)
and scores the outputs (``criterion``). The :class:`~metatl.training.pretrain.Pretrainer`
drives one on the training loop. A :class:`LabelFreeObjective` learns from images only: its
``criterion`` takes no labels and the trainer never gathers a training label for it.

Every random draw comes from the batch's generator (see
:func:`~metatl.training.augment.derived_generator`), so a resumed run sees the same views.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from metatl.config import PretrainConfig
from metatl.training.augment import BatchAugment

__all__ = [
    "OBJECTIVES",
    "LabelFreeObjective",
    "LabelledObjective",
    "Objective",
    "Rotation",
    "SimCLR",
    "Supervised",
    "SupervisedRotation",
    "build_heads",
    "build_objective",
    "contrastive_view",
    "mlp_head",
    "nt_xent",
    "rotate4",
    "rotation_targets",
]

Outputs = tuple[torch.Tensor, ...]
Transform = Callable[[torch.Tensor], torch.Tensor]

# SimCLR's colour distortion is applied with this probability (Chen et al. 2020, appendix A).
_JITTER_PROBABILITY = 0.8
_ASPECT = (3 / 4, 4 / 3)  # the aspect ratios of a random resized crop


# ---- pure functions ------------------------------------------------------------------------


def rotate4(images: torch.Tensor) -> torch.Tensor:
    """The batch turned by 0, 90, 180 and 270 degrees (counter-clockwise), one after another.

    Args:
        images: ``[B, C, S, S]`` (square, so that every turn keeps the shape).

    Returns:
        ``[4B, C, S, S]``: rows ``k*B .. (k+1)*B - 1`` are ``torch.rot90(images, k)``.
    """
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotations need square images, got {tuple(images.shape[-2:])}")
    return torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])


def rotation_targets(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The rotation class (0..3, quarter turns) of each row of :func:`rotate4`'s output for
    ``n`` rows: int64 ``[n]``, ``n // 4`` of each in order."""
    if n % 4:
        raise ValueError(f"{n} rows are not four turns of a batch")
    return torch.arange(4, device=device).repeat_interleave(n // 4)


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

    Row ``i`` of ``z1`` and row ``i`` of ``z2`` are two views of one image. Each of the
    ``2B`` vectors is classified among the other ``2B - 1`` by cosine similarity divided by
    ``temperature``, its twin being the right answer; the loss is the mean over all ``2B``.

    Args:
        z1: ``[B, D]`` projections of the first views.
        z2: ``[B, D]`` projections of the second views.
        temperature: The softmax temperature (> 0).

    Returns:
        The loss (a scalar) and the fraction of vectors whose nearest other vector is their
        twin.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"need two [B, D] batches, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    similarity = z @ z.T / temperature
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    similarity = similarity.masked_fill(self_pairs, float("-inf"))
    twins = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    loss = F.cross_entropy(similarity, twins)
    accuracy = (similarity.detach().argmax(1) == twins).float().mean()
    return loss, accuracy


def contrastive_view(
    images: torch.Tensor, generator: torch.Generator, min_scale: float, jitter: float
) -> torch.Tensor:
    """One random SimCLR view of each image, for small greyscale (or colour) images.

    A random resized crop (area a fraction in ``[min_scale, 1]`` of the image, aspect ratio
    in ``[3/4, 4/3]``, anywhere inside it) resampled bilinearly to the full size; then, with
    probability 0.8 per image, brightness and contrast changes by factors drawn from
    ``[1 - jitter, 1 + jitter]``. No flips: a mirrored glyph is another character.

    Args:
        images: ``[B, C, H, W]`` in pixel units (uint8, or float in ``[0, 255]``).
        generator: Source of every draw (CPU).
        min_scale: Smallest crop area as a fraction of the image, in ``(0, 1]``.
        jitter: Strength of the brightness and contrast changes, in ``[0, 1)``.

    Returns:
        Float ``[B, C, H, W]`` in ``[0, 255]``.
    """
    x = images.float()
    b = x.shape[0]
    area = min_scale + (1 - min_scale) * torch.rand(b, generator=generator)
    log_lo, log_hi = math.log(_ASPECT[0]), math.log(_ASPECT[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(b, generator=generator))
    width = (area * aspect).sqrt().clamp(max=1.0)  # fractions of the side
    height = (area / aspect).sqrt().clamp(max=1.0)
    centre = (torch.rand(b, 2, generator=generator) * 2 - 1) * torch.stack(
        [1 - width, 1 - height], dim=1
    )
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = width, height
    theta[:, :, 2] = centre
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    factors = 1 + jitter * (2 * torch.rand(b, 2, generator=generator) - 1)
    applied = torch.rand(b, generator=generator) < _JITTER_PROBABILITY
    factors = torch.where(applied[:, None], factors, torch.ones_like(factors)).to(x.device)
    brightness, contrast = factors[:, :1, None, None], factors[:, 1:, None, None]
    x = x * brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    return x.clamp_(0.0, 255.0)


def mlp_head(dim: int, out_dim: int) -> nn.Sequential:
    """``Linear -> BatchNorm -> ReLU -> Linear``, ``dim`` wide: SimCLR's projection head and
    the rotation head on pooled backbone features."""
    return nn.Sequential(
        nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True), nn.Linear(dim, out_dim)
    )


# ---- objectives ----------------------------------------------------------------------------


class Objective(ABC):
    """One choice of ``pretrain.objective``.

    Args:
        settings: The ``pretrain`` section of the run config.
        transform: uint8 (or float pixel) images -> normalised network input.
        augment: The ``pretrain.augment`` policy (used by the objectives that say so).
    """

    name: ClassVar[str]
    heads: ClassVar[tuple[str, ...]]  # the model's modules besides ``backbone`` it trains

    def __init__(
        self, settings: PretrainConfig, transform: Transform, augment: BatchAugment
    ) -> None:
        self.settings, self.transform, self.augment = settings, transform, augment

    @classmethod
    @abstractmethod
    def make_heads(
        cls, dim: int, num_classes: int, settings: PretrainConfig
    ) -> dict[str, nn.Module]:
        """The heads it trains on ``dim``-wide features, named as in :attr:`heads`."""

    @abstractmethod
    def inputs(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A batch of training images (uint8 ``[B, C, H, W]``) -> the network's input batch,
        drawing only from ``generator``."""

    @abstractmethod
    def forward(self, model: nn.Module, inputs: torch.Tensor) -> Outputs:
        """The model's outputs on :meth:`inputs`' batch (run under autocast)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LabelledObjective(Objective):
    """An objective that learns from labels: ``criterion(outputs, labels)``."""

    uses_labels: ClassVar[bool] = True

    @abstractmethod
    def criterion(self, outputs: Outputs, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The loss (a float32 scalar) and the training accuracy of a batch."""


class LabelFreeObjective(Objective):
    """An objective that learns from images only: ``criterion(outputs)`` has no labels."""

    uses_labels: ClassVar[bool] = False

    @abstractmethod
    def criterion(self, outputs: Outputs) -> tuple[torch.Tensor, float]:
        """The loss (a float32 scalar) and the pretext task's accuracy on the batch."""


class Supervised(LabelledObjective):
    """Cross-entropy over every training class (with ``label_smoothing``) on ``augment``-ed
    images; the model's ``forward`` gives the class logits (a
    :class:`~metatl.training.pretrain.SupervisedModel`)."""

    name = "supervised"
    heads = ("classifier",)

    @classmethod
    def make_heads(
        cls, dim: int, num_classes: int, settings: PretrainConfig
    ) -> dict[str, nn.Module]:
        return {"classifier": nn.Linear(dim, num_classes)}

    def inputs(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.augment(self.transform(images), generator)

    def forward(self, model: nn.Module, inputs: torch.Tensor) -> Outputs:
        return (model(inputs),)

    def criterion(self, outputs: Outputs, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        (logits,) = outputs
        loss = F.cross_entropy(
            logits.float(), labels, label_smoothing=self.settings.label_smoothing
        )
        return loss, float((logits.detach().argmax(1) == labels).float().mean())


class Rotation(LabelFreeObjective):
    """Rotation prediction: the ``augment``-ed batch at four turns (:func:`rotate4`), a
    ``rotation_head`` (:func:`mlp_head`) classifying the turn from the backbone's features."""

    name = "rotation"
    heads = ("rotation_head",)

    @classmethod
    def make_heads(
        cls, dim: int, num_classes: int, settings: PretrainConfig
    ) -> dict[str, nn.Module]:
        return {"rotation_head": mlp_head(dim, 4)}

    def inputs(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return rotate4(self.augment(self.transform(images), generator))

    def forward(self, model: nn.Module, inputs: torch.Tensor) -> Outputs:
        return (model.rotation_head(model.backbone(inputs)),)

    def criterion(self, outputs: Outputs) -> tuple[torch.Tensor, float]:
        (logits,) = outputs
        return _rotation_loss(logits)


class SimCLR(LabelFreeObjective):
    """Contrastive learning of SimCLR: two views of each image by :func:`contrastive_view`
    (not ``augment``), a ``projection_head`` (:func:`mlp_head` to ``simclr_dim``), then
    :func:`nt_xent` at ``simclr_temperature``."""

    name = "simclr"
    heads = ("projection_head",)

    @classmethod
    def make_heads(
        cls, dim: int, num_classes: int, settings: PretrainConfig
    ) -> dict[str, nn.Module]:
        return {"projection_head": mlp_head(dim, settings.simclr_dim)}

    def inputs(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        s = self.settings
        views = [contrastive_view(images, generator, s.simclr_crop_scale, s.simclr_jitter)]
        views.append(contrastive_view(images, generator, s.simclr_crop_scale, s.simclr_jitter))
        return torch.cat([self.transform(v) for v in views])

    def forward(self, model: nn.Module, inputs: torch.Tensor) -> Outputs:
        return (model.projection_head(model.backbone(inputs)),)

    def criterion(self, outputs: Outputs) -> tuple[torch.Tensor, float]:
        z1, z2 = outputs[0].float().chunk(2)
        loss, accuracy = nt_xent(z1, z2, self.settings.simclr_temperature)
        return loss, float(accuracy)


class SupervisedRotation(LabelledObjective):
    """Multi-task: cross-entropy of the ``classifier`` on the upright images plus
    ``rotation_weight`` times the rotation loss on all four turns, from one backbone pass over
    the turned batch (as Gidaris et al. 2019). The accuracy is the classifier's."""

    name = "supervised+rotation"
    heads = ("classifier", "rotation_head")

    @classmethod
    def make_heads(
        cls, dim: int, num_classes: int, settings: PretrainConfig
    ) -> dict[str, nn.Module]:
        return {"classifier": nn.Linear(dim, num_classes), "rotation_head": mlp_head(dim, 4)}

    def inputs(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return rotate4(self.augment(self.transform(images), generator))

    def forward(self, model: nn.Module, inputs: torch.Tensor) -> Outputs:
        features = model.backbone(inputs)
        upright = features[: features.shape[0] // 4]
        return model.classifier(upright), model.rotation_head(features)

    def criterion(self, outputs: Outputs, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        logits, rotation_logits = outputs
        loss = F.cross_entropy(
            logits.float(), labels, label_smoothing=self.settings.label_smoothing
        )
        rotation_loss, _ = _rotation_loss(rotation_logits)
        accuracy = float((logits.detach().argmax(1) == labels).float().mean())
        return loss + self.settings.rotation_weight * rotation_loss, accuracy


def _rotation_loss(logits: torch.Tensor) -> tuple[torch.Tensor, float]:
    targets = rotation_targets(logits.shape[0], logits.device)
    loss = F.cross_entropy(logits.float(), targets)
    return loss, float((logits.detach().argmax(1) == targets).float().mean())


_OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (Supervised, Rotation, SimCLR, SupervisedRotation)
}
#: Every ``pretrain.objective`` (the config's choices, ``metatl.config.load.CHOICES``, agree).
OBJECTIVES = tuple(_OBJECTIVES)


def _objective_class(settings: PretrainConfig) -> type[Objective]:
    try:
        return _OBJECTIVES[settings.objective]
    except KeyError:
        raise ValueError(
            f"pretrain.objective={settings.objective!r}; choose one of: {', '.join(OBJECTIVES)}"
        ) from None


def build_heads(settings: PretrainConfig, dim: int, num_classes: int) -> dict[str, nn.Module]:
    """The heads ``settings.objective`` trains on a ``dim``-wide backbone, by module name, in
    the order they are created (seeded by the global torch RNG)."""
    return _objective_class(settings).make_heads(dim, num_classes, settings)


def build_objective(
    settings: PretrainConfig, transform: Transform, augment: BatchAugment
) -> Objective:
    """The objective ``settings.objective`` names.

    Raises:
        ValueError: An unknown objective.
    """
    return _objective_class(settings)(settings, transform, augment)
