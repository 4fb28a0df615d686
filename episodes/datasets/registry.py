"""Every dataset reader by name: ``load_dataset("fashion_mnist", root, "test")``.

One registry serves Python, run configs (``data.dataset``) and sweeps: a reader is
registered once as ``(root, split, image_size) -> LabelledImages`` and every place that
names datasets takes the list from here.

    @register_dataset("my_set")
    def load_my_set(root: Path, split: str, image_size: int | None) -> LabelledImages: ...
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from episodes.data import LabelledImages
from episodes.datasets.cifar_fs import CIFAR_FS_SPLITS, load_cifar_fs
from episodes.datasets.cub import CUB_SPLITS, load_cub
from episodes.datasets.digits import DIGITS_SPLITS, load_digits_benchmark
from episodes.datasets.fashion_mnist import load_fashion_mnist
from episodes.datasets.glyph_domains import KANJI_DOMAIN_SPLITS, load_kanji_domains
from episodes.datasets.glyphs import load_glyphs
from episodes.datasets.image_folder import load_image_folder
from episodes.datasets.mini_imagenet import load_mini_imagenet
from episodes.datasets.omniglot import load_omniglot

__all__ = [
    "DatasetLoader",
    "UnknownDatasetError",
    "UnknownSplitError",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]

DatasetLoader = Callable[[Path, str, "int | None"], LabelledImages]
"""``(root, split, image_size) -> images``; ``image_size`` None keeps the stored size."""

_DATASETS: dict[str, DatasetLoader] = {}


class UnknownDatasetError(ValueError):
    """No reader is registered under the name."""


class UnknownSplitError(ValueError):
    """The dataset has no split of that name (the message lists the ones it has)."""


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator: register ``loader`` as dataset ``name`` (a later registration wins, with
    a warning)."""

    def add(loader: DatasetLoader) -> DatasetLoader:
        if name in _DATASETS:
            warnings.warn(f"dataset '{name}' registered twice", stacklevel=2)
        _DATASETS[name] = loader
        return loader

    return add


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_DATASETS)


def load_dataset(
    name: str, root: str | os.PathLike[str], split: str, image_size: int | None = None
) -> LabelledImages:
    """Split ``split`` of dataset ``name`` stored at ``root``, at ``image_size`` (None: as
    stored).

    Raises:
        UnknownDatasetError: No such dataset (the message lists the registered ones).
        UnknownSplitError: The dataset has no such split.
        FileNotFoundError, DatasetFormatError: From the reader.
    """
    if name not in _DATASETS:
        raise UnknownDatasetError(
            f"unknown dataset '{name}'; registered datasets: {', '.join(list_datasets())}"
        )
    return _DATASETS[name](Path(root), split, image_size)


def _check_split(dataset: str, split: str, splits: tuple[str, ...]) -> None:
    if split not in splits:
        raise UnknownSplitError(f"{dataset} has the splits {', '.join(splits)}, not {split!r}")


@register_dataset("glyphs")
def _glyphs(root: Path, split: str, image_size: int | None) -> LabelledImages:
    """The glyph benchmark built by ``python -m episodes.glyphs`` (its manifest's splits)."""
    return load_glyphs(root, split, image_size=image_size)


@register_dataset("image_folder")
def _image_folder(root: Path, split: str, image_size: int | None) -> LabelledImages:
    """``root/<split>/<class>/*.png``: any split name that is a folder."""
    return load_image_folder(root / split, image_size=image_size, name=f"{root.name}/{split}")


@register_dataset("mini_imagenet")
def _mini_imagenet(root: Path, split: str, image_size: int | None) -> LabelledImages:
    """Ravi & Larochelle's CSV splits."""
    _check_split("mini_imagenet", split, ("train", "val", "test"))
    return load_mini_imagenet(root, split, image_size=image_size)  # type: ignore[arg-type]


@register_dataset("omniglot")
def _omniglot(root: Path, split: str, image_size: int | None) -> LabelledImages:
    """Test on ``images_evaluation``; the background set's characters are split 80/20
    (seeded) into train and validation classes."""
    _check_split("omniglot", split, ("train", "val", "test"))
    if split == "test":
        return load_omniglot(root, "evaluation", image_size=image_size)
    background = load_omniglot(root, "background", image_size=image_size)
    order = torch.randperm(background.num_classes, generator=torch.Generator().manual_seed(0))
    n_val = max(1, background.num_classes // 5)
    classes = order[n_val:] if split == "train" else order[:n_val]
    return background.select_classes(sorted(classes.tolist()), name=f"omniglot/{split}")


@register_dataset("fashion_mnist")
def _fashion_mnist(root: Path, split: str, image_size: int | None) -> LabelledImages:
    """Fashion-MNIST's ``train`` (60,000) and ``test`` (10,000) images of the same ten
    classes (Debian's ``dataset-fashion-mnist``: ``/usr/share/datasets/fashion-mnist``)."""
    _check_split("Fashion-MNIST", split, ("train", "test"))
    data = load_fashion_mnist(root, split)  # type: ignore[arg-type]
    return data if image_size is None else data.resized(image_size)


@register_dataset("cifar_fs")
def _cifar_fs(root: Path, split: str, image_size: int | None) -> LabelledImages:
    """CIFAR-FS: Bertinetto et al.'s 64/16/20 class split of CIFAR-100."""
    _check_split("cifar_fs", split, CIFAR_FS_SPLITS)
    return load_cifar_fs(root, split, image_size=image_size)  # type: ignore[arg-type]


@register_dataset("cub")
def _cub(root: Path, split: str, image_size: int | None) -> LabelledImages:
    """CUB-200-2011 with Chen et al.'s 100/50/50 class split (84x84 unless asked)."""
    _check_split("cub", split, CUB_SPLITS)
    return load_cub(root, split, image_size=image_size or 84)  # type: ignore[arg-type]


@register_dataset("digits")
def _digits(root: Path, split: str, image_size: int | None) -> LabelledImages:
    """Digits, synthetic -> real (``python -m episodes.digits``): fonts -> scikit-learn's
    handwritten digits; splits source_train, source_val, target_train, target_test."""
    _check_split("digits", split, DIGITS_SPLITS)
    return load_digits_benchmark(root, split, image_size=image_size)


@register_dataset("kanji_domains")
def _kanji_domains(root: Path, split: str, image_size: int | None) -> LabelledImages:
    """Kanji, printed -> brush and handwritten designs of 100 glyph-benchmark classes
    (``root`` is a glyph benchmark); splits source_train, source_val, target_train,
    target_test, target_fewshot."""
    _check_split("kanji_domains", split, KANJI_DOMAIN_SPLITS)
    return load_kanji_domains(root, split, image_size=image_size)


@register_dataset("glyphs_c")
def _glyphs_c(root: Path, split: str, image_size: int | None) -> LabelledImages:
    """The glyph benchmark corrupted (ImageNet-C style, seed 0) at ``image_size``: split
    ``<split>-<kind>-<severity>`` (e.g. ``test-gaussian_noise-3``), or a plain split."""
    from episodes.corruptions import corrupted, parse_corruption_split

    base, kind, severity = parse_corruption_split(split)
    data = load_glyphs(root, base, image_size=image_size)
    if kind is None:
        return data
    result = corrupted(data, kind, severity, seed=0)
    return LabelledImages(result.images, result.labels, result.class_names, f"glyphs_c/{split}")
