"""Reader for the generic ``root/<class>/<image>`` layout (as torchvision's ``ImageFolder``).

With ``channels=None`` a collection is colour as soon as one image is: :func:`colour_images`
names the images that make it so (e.g. the one colour photo in an otherwise greyscale split).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from episodes.data import LabelledImages
from episodes.datasets._decode import (
    IMAGE_EXTENSIONS,
    DatasetFormatError,
    decode_images,
    describe_path,
    is_colour_image,
    list_image_files,
    list_subdirectories,
)

__all__ = ["colour_images", "image_folder_files", "load_image_folder"]


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
        channels: 1 (greyscale), 3 (RGB) or ``None`` (1 if every image is greyscale, else 3;
            :func:`colour_images` names the colour ones).
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
    class_dirs, paths, counts = _scan(root)
    images = decode_images(paths, channels=channels, image_size=image_size)
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return LabelledImages(
        images=images,
        labels=labels,
        class_names=tuple(d.name for d in class_dirs),
        name=name or root.name or str(root),
    )


def image_folder_files(root: str | os.PathLike[str]) -> list[Path]:
    """The image files :func:`load_image_folder` decodes for ``root``, in its order.

    Args:
        root: The folder holding one subdirectory per class.

    Returns:
        ``root/<class>/<image>`` paths, classes sorted by name, images by file name.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a directory.
        DatasetFormatError: No class directory, or a class directory without images.
    """
    return _scan(Path(root))[1]


def colour_images(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], limit: int | None = 5
) -> list[Path]:
    """The images that make a collection colour when decoded with ``channels=None``.

    :func:`load_image_folder` and :func:`~episodes.datasets.decode_images` decode a collection
    as 3-channel as soon as one of its images is colour; this names those images, by the same
    rule, so that a message can say which files to convert (or that ``channels=1`` or ``3``
    should be set). Only headers are read, except for palette images.

    Args:
        source: An image-folder root (``root/<class>/<image>``, the files
            :func:`load_image_folder` reads) or a sequence of image files.
        limit: Stop after this many colour images; ``None`` finds them all.

    Returns:
        The colour images, at most ``limit`` of them, in decoding order; empty if every
        image is greyscale (the collection decodes to 1 channel).

    Raises:
        ValueError: ``limit`` is below 1.
        FileNotFoundError: ``source`` is a folder path that does not exist.
        DatasetFormatError: ``source`` is a folder without the image-folder layout.
        ImageDecodeError: An image cannot be opened (the message names it).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit!r}")
    if isinstance(source, (str, os.PathLike)):
        paths = image_folder_files(source)
    else:
        paths = [Path(p) for p in source]
    found = (path for path in paths if is_colour_image(path))
    return list(itertools.islice(found, limit))


def _scan(root: Path) -> tuple[list[Path], list[Path], list[int]]:
    """``(class directories, image files, images per class)`` of an image folder, checked."""
    if not root.is_dir():
        state = "is not a directory" if root.exists() else "does not exist"
        raise FileNotFoundError(
            f"image folder {describe_path(root)} {state}; expected a folder with one "
            "subdirectory of images per class (<class>/<image>.png|jpg|...)"
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
    return class_dirs, paths, counts
