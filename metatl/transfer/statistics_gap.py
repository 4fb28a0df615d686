"""How far a target dataset is from a source model's training data, per block, without that data.

Every BatchNorm layer of a trained network stores the running mean and variance of its input
channels over the source data. :func:`batchnorm_gaps` runs the target images through the
network (eval mode), measures the same statistics of each BatchNorm layer's input on the target
set, and compares the two with :func:`statistics_gap`: per channel, the squared 2-Wasserstein
distance between the two Gaussians in units of the source variance,

    gap_c = ((mu_t - mu_s)^2 + (sigma_t - sigma_s)^2) / (sigma_s^2 + eps),

so 0 means identical statistics and about 1 a shift of one source standard deviation. A layer's
gap is the mean over its channels, a block's the mean over its BatchNorm layers.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from metatl.backbones import Backbone
from metatl.training.data import ImageTransform

__all__ = ["batchnorm_gaps", "statistics_gap"]


@torch.no_grad()
def batchnorm_gaps(
    backbone: Backbone,
    images: torch.Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> list[float]:
    """The statistics gap of every block of ``backbone`` on ``images``, in one pass.

    Forward pre-hooks on every BatchNorm layer inside each of ``backbone.blocks`` accumulate
    per-channel sums and sums of squares of the layer's input (over batch and spatial
    positions, in float64), so the target mean and (population) variance are exact over the
    whole image set, whatever ``batch_size``. The backbone runs in eval mode, so each layer
    sees the input the trained network would give it, and is left in the mode it was in.

    BatchNorm layers without running statistics (``track_running_stats=False`` or buffers set
    to ``None``), or that received no input, are skipped; a block left without any layer gets
    NaN (its gap is undefined, not zero).

    Args:
        backbone: The source model's feature extractor, BatchNorm statistics from its training.
        images: Target images, uint8 ``[N, C, H, W]`` (transformed to the backbone's input).
        batch_size: Images per forward pass.
        device: Where the images are sent (the backbone must already be there).

    Returns:
        ``len(backbone.blocks)`` gaps, block by block in input-to-output order.

    Raises:
        ValueError: ``images`` is not a non-empty uint8 ``[N, C, H, W]`` tensor.
    """
    check_images(images)
    block_layers = [_tracked_batchnorms(block) for block in backbone.blocks]
    moments = {bn: _Moments() for layers in block_layers for bn in layers}
    handles: list[RemovableHandle] = []
    was_training = backbone.training
    try:
        for bn, layer_moments in moments.items():
            handles.append(bn.register_forward_pre_hook(layer_moments.hook))
        backbone.eval()
        _run_blocks(backbone, images, batch_size, device)
    finally:
        for handle in handles:
            handle.remove()
        backbone.train(was_training)
    return [_block_gap(layers, moments) for layers in block_layers]


def statistics_gap(
    mean_s: torch.Tensor,
    var_s: torch.Tensor,
    mean_t: torch.Tensor,
    var_t: torch.Tensor,
    eps: float,
) -> float:
    """Mean over channels of the squared W2 distance between two Gaussians, in source variances.

    ``((mean_t - mean_s)^2 + (sqrt(var_t) - sqrt(var_s))^2) / (var_s + eps)`` per channel,
    computed in float64.

    Args:
        mean_s: Source (running) mean, ``[C]``.
        var_s: Source (running) variance, ``[C]``.
        mean_t: Target mean, ``[C]``.
        var_t: Target variance, ``[C]``.
        eps: Added to the source variance (a BatchNorm layer's own ``eps``).

    Returns:
        The gap, 0 for identical statistics.

    Raises:
        ValueError: The four tensors are not non-empty ``[C]`` tensors of one shape.
    """
    stats = [t.detach().to("cpu", torch.float64) for t in (mean_s, var_s, mean_t, var_t)]
    if any(t.dim() != 1 or t.shape != stats[0].shape for t in stats) or stats[0].numel() == 0:
        raise ValueError(
            f"statistics must be non-empty [C] tensors of one shape, got "
            f"{[tuple(t.shape) for t in stats]}"
        )
    mean_s64, var_s64, mean_t64, var_t64 = stats
    squared_w2 = (mean_t64 - mean_s64) ** 2 + (var_t64.sqrt() - var_s64.sqrt()) ** 2
    return float((squared_w2 / (var_s64 + eps)).mean())


class _Moments:
    """Per-channel float64 sums and sums of squares of one BatchNorm layer's inputs."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def hook(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        """Forward pre-hook: add the input ``[B, C, *]`` to the sums."""
        x = args[0].detach()
        channels = x.shape[1]
        if x.device.type == "mps":  # MPS has no float64
            x = x.cpu()
        x = x.transpose(0, 1).reshape(channels, -1).to(torch.float64)
        total, squares = x.sum(dim=1).cpu(), (x * x).sum(dim=1).cpu()
        if self.total is None or self.squares is None:
            self.total, self.squares = total, squares
        else:
            self.total += total
            self.squares += squares
        self.count += x.shape[1]

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and population variance, each float64 ``[C]``."""
        assert self.total is not None and self.squares is not None
        mean = self.total / self.count
        # Rounding can make E[x^2] - E[x]^2 slightly negative for a constant channel.
        var = (self.squares / self.count - mean * mean).clamp(min=0.0)
        return mean, var


def check_images(images: torch.Tensor) -> None:
    """Raise ValueError unless ``images`` is a non-empty uint8 ``[N, C, H, W]`` tensor."""
    if images.dtype != torch.uint8 or images.dim() != 4 or len(images) == 0:
        raise ValueError(
            f"images must be a non-empty uint8 [N, C, H, W] tensor, got {images.dtype} "
            f"{tuple(images.shape)}"
        )


def _tracked_batchnorms(block: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers inside ``block`` that hold running statistics."""
    return [
        m
        for m in block.modules()
        if isinstance(m, _BatchNorm)
        and m.track_running_stats
        and m.running_mean is not None
        and m.running_var is not None
    ]


def _run_blocks(
    backbone: Backbone, images: torch.Tensor, batch_size: int, device: torch.device | str
) -> None:
    """Run ``images`` (uint8 ``[N, C, H, W]``) through ``backbone.blocks`` batch by batch."""
    transform = ImageTransform(backbone.input_spec)
    for start in range(0, len(images), batch_size):
        h = transform(images[start : start + batch_size]).to(device)
        for block in backbone.blocks:
            h = block(h)


def _block_gap(layers: list[_BatchNorm], moments: dict[_BatchNorm, _Moments]) -> float:
    """Mean gap of the ``layers`` that saw input; NaN if none did."""
    gaps = [_layer_gap(bn, moments[bn]) for bn in layers if moments[bn].count > 0]
    return sum(gaps) / len(gaps) if gaps else math.nan


def _layer_gap(bn: _BatchNorm, moments: _Moments) -> float:
    """Gap between ``bn``'s running statistics and the target statistics of its input."""
    assert bn.running_mean is not None and bn.running_var is not None
    mean_t, var_t = moments.mean_var()
    return statistics_gap(bn.running_mean, bn.running_var, mean_t, var_t, bn.eps)
