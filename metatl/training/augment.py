"""Batched, seeded image augmentation for supervised pretraining.

Every random draw comes from an explicit :class:`torch.Generator`, so a batch's augmentation
is a function of its generator's seed alone (see :func:`derived_generator`) and a resumed run
draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["AUGMENTATIONS", "BatchAugment", "derived_generator", "random_crop", "random_hflip"]

AUGMENTATIONS = ("none", "crop", "crop_flip")


def derived_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of integers (e.g. ``(seed, epoch, batch)``).

    The keys are mixed by :class:`numpy.random.SeedSequence`, so nearby tuples give
    unrelated streams.
    """
    entropy = [int(k) % 2**64 for k in keys]
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Per image, a random ``H x W`` crop of the image padded by ``padding`` on every side.

    The padding repeats the border pixels rather than adding a constant: a glyph on a white
    background or a photo keeps its own background instead of gaining a black frame. Any
    dtype (uint8 or float); a crop is a shift by ``(dy, dx)`` in ``[-padding, padding]``.

    Args:
        images: ``[B, C, H, W]``.
        padding: Pixels of padding; 0 returns ``images`` unchanged.
        generator: Source of the offsets (CPU).

    Returns:
        ``[B, C, H, W]``, same dtype and device as ``images``.
    """
    if padding <= 0:
        return images
    b, _, h, w = images.shape
    shifts = torch.randint(-padding, padding + 1, (b, 2), generator=generator)
    shifts = shifts.to(images.device)
    # Clamped source coordinates = edge padding followed by the crop, in one gather.
    rows = (torch.arange(h, device=images.device) + shifts[:, :1]).clamp_(0, h - 1)  # [B, H]
    cols = (torch.arange(w, device=images.device) + shifts[:, 1:]).clamp_(0, w - 1)  # [B, W]
    batch = torch.arange(b, device=images.device)[:, None, None]
    cropped = images[batch, :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return cropped.permute(0, 3, 1, 2).contiguous()


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2.

    Args:
        images: ``[B, C, H, W]``.
        generator: Source of the coin flips (CPU).

    Returns:
        ``[B, C, H, W]``.
    """
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    flip = flip.to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


class BatchAugment:
    """The ``pretrain.augment`` policy applied to a batch.

    ``none``: identity. ``crop``: :func:`random_crop`. ``crop_flip``: crop, then
    :func:`random_hflip` (not the default: a mirrored glyph is another, or no, character).

    Args:
        mode: One of :data:`AUGMENTATIONS`.
        padding: Crop padding in pixels at the size the batch has when augmented.
    """

    def __init__(self, mode: str, padding: int) -> None:
        if mode not in AUGMENTATIONS:
            raise ValueError(f"augment={mode!r}; choose one of: {', '.join(AUGMENTATIONS)}")
        if padding < 0:
            raise ValueError(f"crop padding must be >= 0, got {padding}")
        self.mode = mode
        self.padding = padding

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``, drawing only from ``generator``."""
        if self.mode == "none":
            return images
        images = random_crop(images, self.padding, generator)
        if self.mode == "crop_flip":
            images = random_hflip(images, generator)
        return images

    def __repr__(self) -> str:
        return f"BatchAugment(mode={self.mode!r}, padding={self.padding})"
