"""Test-time adaptation of a trained model to unlabelled target images: AdaBN and TENT.

Both take a model and the target's images (an :class:`~episodes.UnlabelledImages`, or a uint8
tensor) and return an adapted copy; the model given is never changed.

- :func:`adabn` (Li et al. 2017, "Revisiting Batch Normalization for Practical Domain
  Adaptation"): every BatchNorm layer's running mean and variance are re-estimated on the
  target images, the weights untouched.
- :func:`tent` (Wang et al. 2021, "Tent: Fully Test-Time Adaptation by Entropy
  Minimization"): the scales and shifts of the normalisation layers, and nothing else, are
  trained to minimise the entropy of the model's predictions on target batches, BatchNorm
  normalising each batch with its own statistics. TENT adapts online on the test stream and
  predicts with each batch's statistics; here the target images to adapt on and the images
  scored are different sets, so after the entropy steps the BatchNorm statistics are
  re-estimated on the target images (:func:`adabn`) and the adapted model predicts one image
  at a time, in eval mode, with those.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from episodes import UnlabelledImages
from metatl.adaptation.losses import entropy
from metatl.training.augment import derived_generator
from metatl.training.device import autocast

__all__ = ["adabn", "batch_norm_layers", "normalisation_parameters", "tent"]

Transform = Callable[[torch.Tensor], torch.Tensor]
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics, in module order."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def normalisation_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The scales and shifts of every normalisation layer of ``model`` (BatchNorm, GroupNorm,
    LayerNorm, InstanceNorm with ``affine``), in module order: what TENT trains."""
    return [
        p
        for m in model.modules()
        if isinstance(m, _NORMS)
        for p in (m.weight, m.bias)
        if isinstance(p, nn.Parameter)
    ]


def _images(target: UnlabelledImages | torch.Tensor) -> torch.Tensor:
    images = target.images if isinstance(target, UnlabelledImages) else target
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) < 2:
        raise ValueError("test-time adaptation needs a batch of 2+ target images [N, C, H, W]")
    return images


@torch.no_grad()
def adabn(
    model: nn.Module,
    target: UnlabelledImages | torch.Tensor,
    transform: Transform,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are those of the target images.

    The statistics are reset, then each layer's running mean and variance become the average
    over all batches of the target images of the batch statistics (cumulative, not the
    momentum average), batches taken in order.

    Args:
        model: A trained model; not changed.
        target: The target images, uint8 ``[N, C, H, W]``, no labels.
        transform: uint8 images -> the model's normalised input.
        batch_size: Images per batch.
        device: Where to run.
        precision: Autocast precision (see :func:`metatl.training.device.autocast`).

    Returns:
        The adapted copy, in eval mode.

    Raises:
        ValueError: ``model`` has no BatchNorm layer with running statistics.
    """
    images = _images(target)
    adapted = copy.deepcopy(model).to(device).eval()
    layers = batch_norm_layers(adapted)
    if not layers:
        raise ValueError(
            f"AdaBN re-estimates BatchNorm statistics, but this {type(model).__name__} has no "
            "BatchNorm layer with running statistics"
        )
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average over the batches
        layer.train()
    device = torch.device(device)
    for start in range(0, len(images), batch_size):
        x = transform(images[start : start + batch_size]).to(device)
        if len(x) < 2 and start:  # a last batch of one image has no variance to estimate
            break
        with autocast(device, precision):
            adapted(x)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    return adapted.eval()


def tent(
    model: nn.Module,
    target: UnlabelledImages | torch.Tensor,
    transform: Transform,
    *,
    lr: float = 1e-3,
    batch_size: int = 128,
    epochs: int = 1,
    seed: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> nn.Module:
    """A copy of ``model`` adapted by entropy minimisation on the target images (TENT).

    Only the normalisation scales and shifts are trained (Adam at ``lr``), on ``epochs``
    passes over the target images in seeded random batches of ``batch_size``, BatchNorm in
    train mode (each batch normalised by its own statistics); the loss is the mean entropy of
    the softmax of ``model(x)``. Then the BatchNorm statistics are re-estimated on the target
    images (:func:`adabn`) so that the copy predicts in eval mode.

    Args:
        model: A trained classifier, ``[B, C, H, W]`` -> ``[B, K]`` logits; not changed.
        target: The target images, uint8 ``[N, C, H, W]``, no labels.
        transform: uint8 images -> the model's normalised input.
        lr: Adam's learning rate.
        batch_size: Images per step (the last, smaller batch of an epoch is dropped).
        epochs: Passes over the target images.
        seed: Seeds the batch order.
        device: Where to run.
        precision: Autocast precision.

    Returns:
        The adapted copy, in eval mode.

    Raises:
        ValueError: ``model`` has no normalisation layer with a scale or shift.
    """
    images = _images(target)
    device = torch.device(device)
    adapted = copy.deepcopy(model).to(device)
    params = normalisation_parameters(adapted)
    if not params:
        raise ValueError(
            f"TENT trains the normalisation layers' scales and shifts, but this "
            f"{type(model).__name__} has none"
        )
    trainable = [p.requires_grad for p in adapted.parameters()]
    adapted.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.Adam(params, lr=lr)
    batch_size = min(batch_size, len(images))
    adapted.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=derived_generator(seed, epoch))
        for start in range(0, len(images) - batch_size + 1, batch_size):
            x = transform(images[order[start : start + batch_size]]).to(device)
            with autocast(device, precision):
                logits = adapted(x)
            loss = entropy(logits)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    for p, flag in zip(adapted.parameters(), trainable, strict=True):
        p.requires_grad_(flag)
    if batch_norm_layers(adapted):
        return adabn(adapted, images, transform, device=device, precision=precision)
    return adapted.eval()
