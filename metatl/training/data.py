"""From a :class:`DataConfig` to in-memory splits, and from a backbone to its transform."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

from episodes import LabelledImages
from episodes.datasets import (
    DatasetFormatError,
    UnknownDatasetError,
    UnknownSplitError,
    colour_images,
    load_dataset,
)
from metatl.backbones import InputSpec
from metatl.config import ConfigError, DataConfig

__all__ = ["ImageTransform", "load_split", "load_splits"]

SPLITS = ("train", "val", "test")


def load_splits(config: DataConfig) -> dict[str, LabelledImages]:
    """The ``train``, ``val`` and ``test`` splits of a run, checked to agree on their image
    shape (a colour image in one split only would otherwise fail after training).

    Raises:
        FileNotFoundError: The data is not where ``data.root`` says (the message says where
            it looked and how to point a run elsewhere).
        DatasetFormatError: The splits' images differ in channels or size.
    """
    splits = {name: load_split(config, getattr(config, f"{name}_split")) for name in SPLITS}
    expected = splits["train"].image_shape
    for name, data in splits.items():
        if data.image_shape != expected:
            raise DatasetFormatError(
                f"the {name} split ({data.name}) holds images of shape {data.image_shape} "
                f"(channels, height, width) but the train split {expected}"
                f"{_colour_hint(config, name, data, expected)}"
            )
    return splits


def load_split(config: DataConfig, split: str) -> LabelledImages:
    """Decode one split of the configured dataset into memory at ``config.image_size``.

    Args:
        config: The data section of the run config.
        split: A split name as the dataset knows it (``train``, ``val``, ``test``).

    Raises:
        FileNotFoundError: The data is not there; the message says where it looked and how
            to point a run elsewhere.
    """
    try:
        return _read_split(config, split)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{err}; if the data is elsewhere, point the run at it with --data-root DIR (or "
            "data.root=DIR); a relative path is read from the working directory, so the "
            "presets' data/glyphs needs the repository root"
        ) from None


def _read_split(config: DataConfig, split: str) -> LabelledImages:
    try:
        return load_dataset(config.dataset, config.root, split, config.image_size)
    except (UnknownDatasetError, UnknownSplitError) as err:
        raise ConfigError(f"data.dataset={config.dataset!r}: {err}") from None


def _colour_hint(
    config: DataConfig, name: str, data: LabelledImages, expected: tuple[int, ...]
) -> str:
    """Which files make an image folder's split colour when another split is grey."""
    if config.dataset != "image_folder" or data.image_shape[0] == expected[0]:
        return ""
    colour_split = name if data.image_shape[0] == 3 else "train"
    folder = Path(config.root) / getattr(config, f"{colour_split}_split")
    files = colour_images(folder, limit=3)
    if not files:
        return ""
    return (
        f"; the {colour_split} split is colour because of {', '.join(map(str, files))}: make "
        "every image greyscale, or every split colour"
    )


class ImageTransform:
    """uint8 ``[B, C, H, W]`` -> normalised float ``[B, C', S, S]`` for a backbone.

    Grey images fed to an RGB backbone are replicated over channels; images of another size
    than the backbone expects (``S = spec.size``) are resized (bilinear, antialiased), per
    episode, so that a small cache can feed a large pretrained network. Picklable, so that
    DataLoader workers can run it.

    Args:
        spec: The backbone's expected input.
    """

    def __init__(self, spec: InputSpec) -> None:
        self.channels = spec.channels
        self.size = spec.size
        self.mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != self.channels:
            raise ValueError(
                f"images have {x.shape[1]} channels but the backbone expects {self.channels}"
            )
        return (x - self.mean) / self.std
