"""Reader for CUB-200-2011 (Wah et al., 2011) as ``CUB_200_2011.tgz`` extracts, in few-shot splits.

Layout (one line per image or class; ids count from 1)::

    CUB_200_2011/classes.txt              "<class_id> <NNN.Class_name>"            200 classes
    CUB_200_2011/images.txt               "<image_id> <NNN.Class_name>/<file>.jpg"  11788 images
    CUB_200_2011/image_class_labels.txt   "<image_id> <class_id>"
    CUB_200_2011/bounding_boxes.txt       "<image_id> <x> <y> <width> <height>"    pixels, floats
    CUB_200_2011/train_test_split.txt     image-level split; unused (few-shot splits classes)
    CUB_200_2011/images/<NNN.Class_name>/<Class_name_NNNN_NNNNN>.jpg

The metadata files are the truth: classes come from ``classes.txt``, images and their classes
from ``images.txt`` and ``image_class_labels.txt``; ``images/`` is never listed, so a folder there
that ``classes.txt`` does not name is ignored.

Few-shot work splits the classes, not the images: 100 train / 50 val / 50 test (Hilliard et al.,
2018) as Chen et al. (ICLR 2019, ``filelists/CUB/write_CUB_filelist.py``) write it — over the
class folders sorted by name, the ``i``-th (from 0) is train if ``i % 2 == 0``, val if
``i % 4 == 1`` and test if ``i % 4 == 3``. Other published splits can be given as a file of class
folder names.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Literal, NamedTuple

import torch

from episodes.data import LabelledImages, resize_images
from episodes.datasets._decode import DatasetFormatError, decode_images, describe_path

__all__ = ["CUB_SPLITS", "CubSplit", "cub_class_split", "load_cub"]

CubSplit = Literal["train", "val", "test"]
CUB_SPLITS: tuple[CubSplit, ...] = ("train", "val", "test")

_DIR_NAME = "CUB_200_2011"
_SPLIT_OF_INDEX: tuple[CubSplit, ...] = ("train", "val", "train", "test")  # by i % 4
_FOLDER_NAME = re.compile(r"\d+\.(.+)")
_SHOWN = 5  # names quoted in an error message before "..."


class _Box(NamedTuple):
    """A ``bounding_boxes.txt`` row; ``where`` is ``"<file>, line <n>"`` for messages."""

    x: float
    y: float
    width: float
    height: float
    where: str


def cub_class_split(class_folders: Sequence[str]) -> dict[str, list[str]]:
    """Split class folders by the Chen et al. (2019) rule: 200 CUB classes -> 100 / 50 / 50.

    Args:
        class_folders: Class folder names (e.g. ``"001.Black_footed_Albatross"``), any order.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``: with the folders sorted by name, the
        ``i``-th (from 0) goes to train if ``i % 2 == 0``, val if ``i % 4 == 1``, test if
        ``i % 4 == 3``. Each list is sorted.

    Raises:
        ValueError: A folder name is repeated.
    """
    folders = sorted(class_folders)
    repeated = sorted({a for a, b in itertools.pairwise(folders) if a == b})
    if repeated:
        raise ValueError(f"class folders must be distinct; repeated: {_quoted(repeated)}")
    split: dict[str, list[str]] = {name: [] for name in CUB_SPLITS}
    for i, folder in enumerate(folders):
        split[_SPLIT_OF_INDEX[i % 4]].append(folder)
    return split


def load_cub(
    root: str | os.PathLike[str],
    split: CubSplit = "train",
    *,
    image_size: int = 84,
    split_file: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    crop_to_box: bool = False,
) -> LabelledImages:
    """Load the images of one few-shot class split of CUB-200-2011 as RGB.

    Labels follow the split's class folders sorted by name (for the official folders, class-id
    order); images are ordered by class, then as in ``images.txt``. Greyscale JPEGs (a few ship)
    are replicated across the three channels.

    Args:
        root: The ``CUB_200_2011`` folder (holding ``images.txt``), or the folder holding it.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: Resize every image (after any crop) to ``image_size x image_size``; the
            aspect ratio is not kept.
        split_file: A text file of the class folder names (e.g. ``001.Black_footed_Albatross``,
            or without the ``NNN.`` prefix) of this split, one per line, ``#`` starting a
            comment; replaces the Chen et al. rule (:func:`cub_class_split`).
        workers: Decoding threads; ``None`` uses one per available CPU, ``<= 1`` decodes in the
            calling thread.
        crop_to_box: Crop each image to its ``bounding_boxes.txt`` box (widened to whole pixels
            and clipped to the image) before resizing, with :func:`episodes.data.resize_images`
            (agrees with the uncropped path's resizing to within one grey level).

    Returns:
        ``LabelledImages`` with uint8 images ``[N, 3, image_size, image_size]``, int64 labels
        ``[N]`` and the folder names without their ``NNN.`` prefix (e.g.
        ``"Black_footed_Albatross"``) as class names, named ``"cub/<split>"``.

    Raises:
        ValueError: ``split`` is not one of :data:`CUB_SPLITS`, or ``image_size < 1``.
        FileNotFoundError: ``root``, a metadata file, ``images/``, ``split_file`` or images
            listed for the split are missing (for images, the first missing one and how many).
        DatasetFormatError: A metadata file or ``split_file`` is not UTF-8 text, has a malformed
            line (the message gives file and line), repeated or unknown ids or names, or leaves
            the split without classes or a class without images; a box lies outside its image.
        ImageDecodeError: An image cannot be decoded (the message names it).
    """
    if split not in CUB_SPLITS:
        raise ValueError(f"split must be one of {CUB_SPLITS}, got {split!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size!r}")
    base = _resolve_root(Path(root))
    classes = _read_classes(base / "classes.txt")
    folders = _split_folders(classes, split, split_file, base / "classes.txt")
    entries = _split_images(base, classes, folders)
    paths = _image_paths(base, entries, split)
    if crop_to_box:
        boxes = _boxes_for(base / "bounding_boxes.txt", [image_id for image_id, _, _ in entries])
        images = _decode_cropped(paths, boxes, image_size, workers)
    else:
        images = decode_images(paths, channels=3, image_size=image_size, num_workers=workers)
    labels = torch.tensor([label for _, _, label in entries], dtype=torch.int64)
    class_names = tuple(_class_name(folder) for folder in folders)
    return LabelledImages(images, labels, class_names, name=f"cub/{split}")


# --------------------------------------------------------------------------- layout


def _resolve_root(root: Path) -> Path:
    """The ``CUB_200_2011`` folder: ``root`` itself or ``root/CUB_200_2011``."""
    for candidate in (root, root / _DIR_NAME):
        if (candidate / "images.txt").is_file():
            return candidate
    if not root.exists():
        state = "does not exist"
    elif not root.is_dir():
        state = "is not a directory"
    else:
        state = f"holds neither images.txt nor {_DIR_NAME}/images.txt"
    raise FileNotFoundError(
        f"CUB-200-2011 root {describe_path(root)} {state}; pass the {_DIR_NAME} folder that "
        f"{_DIR_NAME}.tgz extracts to (images.txt, classes.txt, image_class_labels.txt, "
        "images/), or the folder holding it"
    )


def _class_name(folder: str) -> str:
    """``"001.Black_footed_Albatross"`` -> ``"Black_footed_Albatross"``."""
    match = _FOLDER_NAME.fullmatch(folder)
    return match.group(1) if match else folder


def _split_folders(
    classes: dict[int, str],
    split: CubSplit,
    split_file: str | os.PathLike[str] | None,
    source: Path,
) -> list[str]:
    """The split's class folders, sorted; checked to be non-empty."""
    if split_file is None:
        folders = cub_class_split(list(classes.values()))[split]
        origin = f"the default rule over the {len(classes)} classes of {source}"
    else:
        folders = sorted(_read_split_file(Path(split_file), list(classes.values()), source))
        origin = str(split_file)
    if not folders:
        raise DatasetFormatError(
            f"split {split!r} of CUB-200-2011 has no classes by {origin}; the default rule "
            "needs at least 4 classes for every split to be non-empty"
        )
    return folders


def _split_images(
    base: Path, classes: dict[int, str], folders: list[str]
) -> list[tuple[int, str, int]]:
    """``(image_id, relative path, label)`` of the split, by label, then ``images.txt`` order."""
    listed = _read_images(base / "images.txt")
    class_of = _read_image_labels(base / "image_class_labels.txt", listed, classes)
    label_of = {folder: k for k, folder in enumerate(folders)}
    entries = [
        (image_id, relative, label_of[classes[class_of[image_id]]])
        for image_id, relative in listed.items()
        if classes[class_of[image_id]] in label_of
    ]
    empty = sorted(set(folders) - {folders[label] for _, _, label in entries})
    if empty:
        raise DatasetFormatError(
            f"{base / 'image_class_labels.txt'} gives no image to classes {_quoted(empty)}; "
            "every class of a split needs images"
        )
    return sorted(entries, key=lambda entry: entry[2])


def _image_paths(base: Path, entries: list[tuple[int, str, int]], split: str) -> list[Path]:
    """``images/<relative path>`` of each of the split's images, checked to exist."""
    image_dir = base / "images"
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"CUB-200-2011 image folder {describe_path(image_dir)} not found; it must hold "
            f"every image listed in {base / 'images.txt'} (re-extract {_DIR_NAME}.tgz)"
        )
    paths = [image_dir / relative for _, relative, _ in entries]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(paths)} images of split {split!r} listed in "
            f"{base / 'images.txt'} are missing, the first being {describe_path(missing[0])}; "
            f"re-extract {_DIR_NAME}.tgz"
        )
    return paths


# --------------------------------------------------------------------------- metadata files


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} {describe_path(path)} not found"
            + ("" if what == "split file" else f"; it ships in {_DIR_NAME}.tgz next to images/")
        )
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise DatasetFormatError(f"{path} is not UTF-8 text: {reason}") from error


def _read_table(path: Path, fields: tuple[str, ...]) -> dict[int, tuple[int, list[str]]]:
    """Rows keyed by their first field, an integer id: ``{id: (line number, other fields)}``.

    Blank lines are skipped; every other line must hold ``len(fields)`` whitespace-separated
    fields and a new id.
    """
    table: dict[int, tuple[int, list[str]]] = {}
    layout = " ".join(f"<{field}>" for field in fields)
    for line_no, line in enumerate(_read_text(path, "CUB-200-2011 file").splitlines(), start=1):
        values = line.split()
        if not values:
            continue
        if len(values) != len(fields):
            raise DatasetFormatError(
                f"{path}, line {line_no}: expected {layout!r}, got {_clipped(line)!r}"
            )
        key = _int_field(path, line_no, values[0], fields[0])
        if key in table:
            raise DatasetFormatError(
                f"{path}, line {line_no}: {fields[0]} {key} already given on line {table[key][0]}"
            )
        table[key] = (line_no, values[1:])
    if not table:
        raise DatasetFormatError(f"{path} is empty; expected lines {layout!r}")
    return table


def _int_field(path: Path, line_no: int, text: str, field: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DatasetFormatError(
            f"{path}, line {line_no}: {field} {_clipped(text)!r} is not an integer"
        ) from None


def _read_classes(path: Path) -> dict[int, str]:
    """``{class_id: class folder}`` from ``classes.txt``, in file order."""
    table = _read_table(path, ("class_id", "NNN.Class_name"))
    seen: dict[str, int] = {}
    for line_no, (folder,) in table.values():
        if folder in seen:
            raise DatasetFormatError(
                f"{path}, line {line_no}: class folder {folder!r} already given on line "
                f"{seen[folder]}"
            )
        seen[folder] = line_no
    return {class_id: folder for class_id, (_, (folder,)) in table.items()}


def _read_images(path: Path) -> dict[int, str]:
    """``{image_id: path relative to images/}`` from ``images.txt``, in file order."""
    listed = {}
    for image_id, (line_no, (relative,)) in _read_table(path, ("image_id", "path")).items():
        parts = PurePosixPath(relative).parts
        if PurePosixPath(relative).is_absolute() or ".." in parts or "\\" in relative:
            raise DatasetFormatError(
                f"{path}, line {line_no}: image path {_clipped(relative)!r} must be relative "
                "to images/ ('<NNN.Class_name>/<file>.jpg')"
            )
        listed[image_id] = relative
    return listed


def _read_image_labels(
    path: Path, listed: dict[int, str], classes: dict[int, str]
) -> dict[int, int]:
    """``{image_id: class_id}`` from ``image_class_labels.txt``, checked against the others."""
    table = _read_table(path, ("image_id", "class_id"))
    class_of = {}
    for image_id, (line_no, (class_text,)) in table.items():
        class_id = _int_field(path, line_no, class_text, "class_id")
        if class_id not in classes:
            raise DatasetFormatError(
                f"{path}, line {line_no}: class_id {class_id} is not in {path.parent}/classes.txt"
            )
        if image_id not in listed:
            raise DatasetFormatError(
                f"{path}, line {line_no}: image_id {image_id} is not in {path.parent}/images.txt"
            )
        class_of[image_id] = class_id
    unlabelled = [image_id for image_id in listed if image_id not in class_of]
    if unlabelled:
        raise DatasetFormatError(
            f"{path} gives no class to {len(unlabelled)} images of {path.parent}/images.txt, "
            f"the first being image_id {unlabelled[0]} ({listed[unlabelled[0]]})"
        )
    return class_of


def _read_split_file(path: Path, folders: list[str], source: Path) -> list[str]:
    """Class folders named by a split file (folder names, or names without ``NNN.``)."""
    folder_of = {_class_name(folder): folder for folder in folders}
    folder_of.update({folder: folder for folder in folders})
    chosen: dict[str, int] = {}
    unknown: list[str] = []
    for line_no, line in enumerate(_read_text(path, "split file").splitlines(), start=1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if name not in folder_of:
            unknown.append(f"{name!r} (line {line_no})")
        elif folder_of[name] in chosen:
            raise DatasetFormatError(
                f"{path}, line {line_no}: class {name!r} already given on line "
                f"{chosen[folder_of[name]]}"
            )
        else:
            chosen[folder_of[name]] = line_no
    if unknown:
        raise DatasetFormatError(
            f"{path}: class names not in {source}: {_quoted(unknown, quote=False)}; give "
            "class folder names such as '001.Black_footed_Albatross', one per line"
        )
    if not chosen:
        raise DatasetFormatError(f"{path} names no classes; give class folder names, one per line")
    return list(chosen)


def _boxes_for(path: Path, image_ids: list[int]) -> list[_Box]:
    """The ``bounding_boxes.txt`` box of each image, in the order given."""
    table = _read_table(path, ("image_id", "x", "y", "width", "height"))
    boxes = []
    for image_id in image_ids:
        if image_id not in table:
            raise DatasetFormatError(f"{path} gives no box for image_id {image_id}")
        line_no, values = table[image_id]
        numbers = [_float_field(path, line_no, text) for text in values]
        if numbers[2] <= 0 or numbers[3] <= 0:
            raise DatasetFormatError(
                f"{path}, line {line_no}: box width and height must be > 0, got "
                f"{numbers[2]:g} and {numbers[3]:g}"
            )
        boxes.append(_Box(*numbers, where=f"{path}, line {line_no}"))
    return boxes


def _float_field(path: Path, line_no: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DatasetFormatError(
            f"{path}, line {line_no}: box coordinate {_clipped(text)!r} is not a finite number"
        )
    return value


# --------------------------------------------------------------------------- cropping


def _decode_cropped(
    paths: list[Path], boxes: list[_Box], image_size: int, workers: int | None
) -> torch.Tensor:
    """Decode, crop and resize every image; uint8 ``[N, 3, image_size, image_size]``."""
    crop = partial(_decode_cropped_one, image_size=image_size)
    threads = _worker_count(workers)
    if threads <= 1:
        return torch.stack([crop(path, box) for path, box in zip(paths, boxes, strict=True)])
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cub-crop")
    try:
        return torch.stack(list(pool.map(crop, paths, boxes)))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _decode_cropped_one(path: Path, box: _Box, image_size: int) -> torch.Tensor:
    """One image cropped to ``box`` and resized: uint8 ``[3, image_size, image_size]``."""
    image = decode_images([path], channels=3, num_workers=1)  # [1, 3, H, W]
    height, width = image.shape[2:]
    # Widen to whole pixels so the bird stays inside; the boxes' edges can lie past the image.
    left, top = max(0, math.floor(box.x)), max(0, math.floor(box.y))
    right = min(width, math.ceil(box.x + box.width))
    bottom = min(height, math.ceil(box.y + box.height))
    if right <= left or bottom <= top:
        raise DatasetFormatError(
            f"{box.where}: box x={box.x:g} y={box.y:g} width={box.width:g} "
            f"height={box.height:g} lies outside {path} ({width}x{height})"
        )
    return resize_images(image[:, :, top:bottom, left:right], image_size)[0]


def _worker_count(workers: int | None) -> int:
    if workers is not None:
        return workers
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------- messages


def _clipped(text: str, limit: int = 80) -> str:
    return text.strip() if len(text.strip()) <= limit else text.strip()[:limit] + "..."


def _quoted(names: Sequence[str], quote: bool = True) -> str:
    shown = [repr(name) if quote else name for name in names[:_SHOWN]]
    return ", ".join(shown) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
