"""Reader for miniImageNet in the Ravi & Larochelle (2017) split files.

Layout::

    root/train.csv   64 classes x 600 images   header ``filename,label``
    root/val.csv     16 classes x 600 images   rows like ``n0153282900000005.jpg,n01532829``
    root/test.csv    20 classes x 600 images
    root/images/     every image of the three splits, flat

Labels follow the wnids sorted (code-point order), which in the official CSVs is also their
order of first appearance; images keep the CSV row order.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, get_args

import torch

from episodes.data import LabelledImages
from episodes.datasets._decode import DatasetFormatError, decode_images, describe_path

__all__ = ["MiniImageNetSplit", "load_mini_imagenet"]

MiniImageNetSplit = Literal["train", "val", "test"]

_HEADER = ["filename", "label"]


def load_mini_imagenet(
    root: str | os.PathLike[str],
    split: MiniImageNetSplit,
    image_size: int | None = 84,
) -> LabelledImages:
    """Load one miniImageNet split as RGB.

    Args:
        root: Folder holding ``train.csv``, ``val.csv``, ``test.csv`` and ``images/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: Resize to ``image_size x image_size`` (84 is the standard); ``None``
            keeps the stored size, which must then be the same for every image.

    Returns:
        ``LabelledImages`` with uint8 images ``[N, 3, H, W]``, int64 labels ``[N]`` and the
        wnids (e.g. ``"n01532829"``) as class names, named ``"mini-imagenet/<split>"``.

    Raises:
        ValueError: ``split`` is not one of the three above.
        FileNotFoundError: ``root``, the CSV, ``images/`` or images listed in the CSV are
            missing (the message gives the absolute path looked at; for images, the first
            missing one and how many are missing).
        DatasetFormatError: The CSV is not UTF-8 text, has a wrong header, a malformed row or
            no rows.
        ImageDecodeError: An image cannot be decoded (the message names it).
    """
    if split not in get_args(MiniImageNetSplit):
        raise ValueError(f"split must be one of {get_args(MiniImageNetSplit)}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"miniImageNet root {describe_path(root)} does not exist or is not a directory; "
            "expected {train,val,test}.csv (Ravi & Larochelle split) and images/ there"
        )
    csv_path = root / f"{split}.csv"
    rows = _read_split_csv(csv_path)
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"miniImageNet image folder {describe_path(image_dir)} not found; it must hold "
            f"every image listed in {csv_path.name}"
        )
    with os.scandir(image_dir) as entries:
        present = {entry.name for entry in entries}
    missing = [filename for filename, _ in rows if filename not in present]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(rows)} images listed in {csv_path} are missing from "
            f"{image_dir}, the first being {image_dir / missing[0]}"
        )
    wnids = sorted({wnid for _, wnid in rows})
    label_of = {wnid: k for k, wnid in enumerate(wnids)}
    images = decode_images(
        [image_dir / filename for filename, _ in rows], channels=3, image_size=image_size
    )
    labels = torch.tensor([label_of[wnid] for _, wnid in rows], dtype=torch.int64)
    return LabelledImages(images, labels, tuple(wnids), name=f"mini-imagenet/{split}")


def _read_split_csv(path: Path) -> list[tuple[str, str]]:
    """``(filename, wnid)`` rows of a split CSV, checked."""
    if not path.is_file():
        raise FileNotFoundError(
            f"miniImageNet split file {describe_path(path)} not found; expected "
            "{train,val,test}.csv (Ravi & Larochelle split, header 'filename,label') next to "
            "an images/ folder"
        )
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return _split_rows(path, csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise DatasetFormatError(f"{path} is not a UTF-8 CSV file: {reason}") from error


def _split_rows(path: Path, reader: Iterator[list[str]]) -> list[tuple[str, str]]:
    header = [field.strip() for field in next(reader, [])]
    if header != _HEADER:
        raise DatasetFormatError(
            f"{path}: header is {','.join(header)!r}, expected {','.join(_HEADER)!r}"
        )
    rows = []
    for line_no, row in enumerate(reader, start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DatasetFormatError(
                f"{path}, line {line_no}: expected 'filename,label', got {','.join(row)!r}"
            )
        rows.append((row[0].strip(), row[1].strip()))
    if not rows:
        raise DatasetFormatError(f"{path} lists no images")
    return rows
