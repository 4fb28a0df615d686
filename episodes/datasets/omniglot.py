"""Reader for Omniglot (Lake et al., 2015) as the official release unzips.

Layout (``images_background.zip`` and ``images_evaluation.zip`` unzipped into ``root``)::

    root/images_background/<alphabet>/<character>/<id>_<drawer>.png   30 alphabets, 964 chars
    root/images_evaluation/<alphabet>/<character>/<id>_<drawer>.png   20 alphabets, 659 chars

Every file is a 105x105 1-bit PNG: strokes are black (0), background white (255 once decoded).
Pixels are kept as stored, not inverted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

import torch

from episodes.data import LabelledImages
from episodes.datasets._decode import (
    DatasetFormatError,
    decode_images,
    describe_path,
    list_image_files,
    list_subdirectories,
)

__all__ = ["OmniglotSubset", "load_omniglot"]

OmniglotSubset = Literal["background", "evaluation", "all"]


def load_omniglot(
    root: str | os.PathLike[str],
    subset: OmniglotSubset = "background",
    image_size: int | None = None,
) -> LabelledImages:
    """Load an Omniglot subset; one class per (alphabet, character).

    Classes are ordered by alphabet, then character (directory names sorted); for
    ``subset="all"`` the background classes come first, then the evaluation ones. Class names
    are ``"<alphabet>/<character>"`` (e.g. ``"Latin/character01"``); images within a class are
    sorted by file name.

    Args:
        root: The folder into which ``images_background.zip`` / ``images_evaluation.zip``
            were unzipped.
        subset: ``"background"`` (the usual meta-training set), ``"evaluation"`` or ``"all"``.
        image_size: Resize to ``image_size x image_size`` (e.g. 28); ``None`` keeps 105x105.

    Returns:
        ``LabelledImages`` with uint8 images ``[N, 1, H, W]`` (0 or 255 before resizing) and
        int64 labels ``[N]``, named ``"omniglot/<subset>"``.

    Raises:
        ValueError: ``subset`` is not one of the three above.
        FileNotFoundError: ``root`` or an expected ``images_<subset>`` folder is missing (the
            message gives the absolute path looked at).
        DatasetFormatError: An alphabet or character folder is empty.
        ImageDecodeError: A PNG cannot be decoded (the message names it).
    """
    if subset not in get_args(OmniglotSubset):
        raise ValueError(f"subset must be one of {get_args(OmniglotSubset)}, got {subset!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Omniglot root {describe_path(root)} does not exist or is not a directory; "
            "expected images_background/ and images_evaluation/ there (the official zips, "
            "github.com/brendenlake/omniglot, unzipped)"
        )
    parts = ["background", "evaluation"] if subset == "all" else [subset]
    paths: list[Path] = []
    counts: list[int] = []
    class_names: list[str] = []
    for part in parts:
        for character_dir, files in _characters(root / f"images_{part}", part):
            class_names.append(f"{character_dir.parent.name}/{character_dir.name}")
            paths.extend(files)
            counts.append(len(files))
    if len(set(class_names)) != len(class_names):
        duplicated = sorted({n for n in class_names if class_names.count(n) > 1})
        raise DatasetFormatError(
            f"Omniglot under {root}: characters {duplicated[:5]} appear in both "
            "images_background and images_evaluation; the official subsets are disjoint"
        )
    images = decode_images(paths, channels=1, image_size=image_size)
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return LabelledImages(images, labels, tuple(class_names), name=f"omniglot/{subset}")


def _characters(folder: Path, part: str) -> list[tuple[Path, list[Path]]]:
    """``(character_dir, sorted image files)`` for every character of every alphabet."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Omniglot folder {describe_path(folder)} not found: unzip images_{part}.zip (from "
            f"the official release, github.com/brendenlake/omniglot) into {folder.parent}, "
            f"giving {folder}/<alphabet>/<character>/*.png"
        )
    alphabets = list_subdirectories(folder)
    if not alphabets:
        raise DatasetFormatError(f"Omniglot folder {folder} holds no alphabet folders")
    if [a.name for a in alphabets] == [folder.name]:
        raise DatasetFormatError(
            f"Omniglot folder {folder} holds a single folder {folder.name}/: the zip was "
            f"unzipped one level too deep; unzip images_{part}.zip into {folder.parent}"
        )
    found = []
    for alphabet in alphabets:
        characters = list_subdirectories(alphabet)
        if not characters:
            raise DatasetFormatError(f"Omniglot alphabet folder {alphabet} holds no characters")
        for character in characters:
            files = list_image_files(character)
            if not files:
                raise DatasetFormatError(f"Omniglot character folder {character} holds no PNGs")
            found.append((character, files))
    return found
