"""Reader for the generic ``root/<class>/<image>`` layout (as torchvision's ``ImageFolder``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from episodes.data import LabelledImages
from episodes.datasets._decode import (
    IMAGE_EXTENSIONS,
    DatasetFormatError,
    decode_images,
    list_image_files,
    list_subdirectories,
)

__all__ = ["load_image_folder"]


def load_image_folder(
    root: str | os.PathLike[str],
    image_size: int | None = None,
    channels: int | None = None,
    name: str | None = None,
) -> LabelledImages:
    """Load ``root/<class>/*.{png,jpg,jpeg,bmp,gif,webp}`` into memory.

    Classes are the non-hidden subdirectories of ``root`` sorted by name; label ``k`` is the
    ``k``-th of them and ``class_names[k]`` its directory name. Images are ordered by class,
    then by file name. Hidden files, non-image files and deeper subdirectories are ignored.

    Args:
        root: The folder holding one subdirectory per class.
        image_size: Resize every image to ``image_size x image_size``; ``None`` keeps the
            stored size, which must then be the same for every image.
        channels: 1 (greyscale), 3 (RGB) or ``None`` (1 if every image is greyscale, else 3).
        name: Name of the collection; defaults to the name of ``root``.

    Returns:
        ``LabelledImages`` with uint8 images ``[N, C, H, W]`` and int64 labels ``[N]``.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a directory.
        DatasetFormatError: No class directory, a class directory without images, or
            (without ``image_size``) images of different sizes.
        ImageDecodeError: An image cannot be decoded (the message names it).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {root} does not exist or is not a directory; expected "
            f"{root}/<class>/<image>.png|jpg"
        )
    class_dirs = list_subdirectories(root)
    if not class_dirs:
        loose = len(list_image_files(root))
        hint = f" (it holds {loose} images directly: move them into one folder per class)"
        raise DatasetFormatError(
            f"image folder {root} has no class subdirectories{hint if loose else ''}; "
            f"expected {root}/<class>/<image>.png|jpg"
        )
    paths: list[Path] = []
    counts: list[int] = []
    for class_dir in class_dirs:
        files = list_image_files(class_dir)
        if not files:
            raise DatasetFormatError(
                f"class directory {class_dir} holds no images "
                f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        paths.extend(files)
        counts.append(len(files))
    images = decode_images(paths, channels=channels, image_size=image_size)
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return LabelledImages(
        images=images,
        labels=labels,
        class_names=tuple(d.name for d in class_dirs),
        name=name or root.name or str(root),
    )
