"""Synthetic image folders for smoke tests and examples: seeded noisy blobs, no download.

Each class is a random 7x7 pattern upsampled to 28x28; its images are that pattern plus
Gaussian pixel noise. Written in the ``image_folder`` layout (``root/<split>/<class>/*.png``),
so every reader, config and command takes them like a user's own images.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from PIL import Image

__all__ = ["write_blob_folder"]


def write_blob_folder(
    root: str | os.PathLike[str],
    splits: Mapping[str, int],
    images_per_class: int,
    noise: float = 60.0,
    seed: int = 0,
) -> Path:
    """Write ``splits`` (split name -> number of classes, in order) of blob classes.

    Classes are numbered across splits (``class00``, ``class01``, ...), so splits never
    share a class; images are ``<i>.png``, 28x28 greyscale.

    Args:
        root: Folder to create the splits in.
        splits: E.g. ``{"train": 20, "val": 5, "test": 5}``.
        images_per_class: Images of each class.
        noise: Standard deviation of the pixel noise (0-255 scale).
        seed: Seed of the patterns and the noise.

    Returns:
        ``root``, as a path.
    """
    root = Path(root)
    gen = torch.Generator().manual_seed(seed)
    total = sum(splits.values())
    patterns = torch.nn.functional.interpolate(torch.rand(total, 1, 7, 7, generator=gen), size=28)
    names = [name for name, count in splits.items() for _ in range(count)]
    for c, (pattern, split) in enumerate(zip(patterns, names, strict=True)):
        folder = root / split / f"class{c:02d}"
        folder.mkdir(parents=True)
        for i in range(images_per_class):
            noisy = (pattern[0] * 255 + noise * torch.randn(28, 28, generator=gen)).clamp(0, 255)
            Image.fromarray(noisy.to(torch.uint8).numpy(), mode="L").save(folder / f"{i}.png")
    return root
