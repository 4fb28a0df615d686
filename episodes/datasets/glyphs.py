"""Reader for the glyph benchmark built by :mod:`episodes.glyphs` (kanji rendered in many fonts).

Layout (``python -m episodes.glyphs --out ROOT``)::

    ROOT/manifest.json                    fonts, characters, splits, cache hashes
    ROOT/cache/<split>-images.npy         uint8 [N, 1, S, S], dark ink on white
    ROOT/cache/<split>-labels.npy         int64 [N]
    ROOT/images/<split>/U+XXXX/<font>.png the same images, one folder per class

The reader loads the cache only. Images are memory-mapped copy-on-write: loading takes
milliseconds, pages are read on first use (and shared between processes through the page
cache), and writing to the tensor never changes the file. The PNGs are for inspection and for
tools that want an image-folder layout.
"""

from __future__ import annotations

import ast
import hashlib
import math
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from episodes.data import LabelledImages, resize_images
from episodes.datasets._decode import DatasetFormatError, describe_path, read_manifest

__all__ = ["glyph_splits", "load_glyphs", "read_glyph_manifest"]

_FORMAT = "metatl-glyphs"
_ORDER = {"train": 0, "val": 1, "test": 2}
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # safe inside cache/<split>-*.npy
_NPY_MAGIC = b"\x93NUMPY"
_NPY_MAX_HEADER = 65535


def read_glyph_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a glyph benchmark at ``root``, checked.

    Checked: it is a JSON object of format ``"metatl-glyphs"`` with the builder's keys
    ``splits`` (split name -> list of distinct class names), ``fonts`` (non-empty list),
    ``image_size`` (positive int) and ``cache_sha256`` (file -> hex digest).

    Args:
        root: The directory of the benchmark (``--out`` of ``python -m episodes.glyphs``).

    Returns:
        The manifest.

    Raises:
        FileNotFoundError: ``root`` holds no ``manifest.json``; the one-line message gives the
            absolute path looked at and what was expected there.
        DatasetFormatError: The manifest is not a glyph benchmark manifest written by the
            builder (not UTF-8 JSON, or a key missing or malformed).
    """
    root = Path(root)
    path = root / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(_not_found(root))
    what = (
        f"a glyph benchmark manifest (format {_FORMAT!r}, written by `python -m episodes.glyphs`)"
    )
    return read_manifest(path, _manifest_problem, what)


def _not_found(root: Path) -> str:
    if root.is_dir():
        state = "that directory holds no manifest.json"
    elif root.exists():
        state = "that is a file, not a directory"
    else:
        state = "that directory does not exist"
    return (
        f"no glyph benchmark at {describe_path(root)}: {state}; expected manifest.json and "
        "cache/ there, as written by `python -m episodes.glyphs --out DIR`, which builds one "
        "if none exists anywhere"
    )


def _manifest_problem(manifest: object) -> str | None:
    """What makes ``manifest`` not one the builder writes, or ``None``."""
    if not isinstance(manifest, dict):
        return f"it holds a JSON {type(manifest).__name__}, not an object"
    if manifest.get("format") != _FORMAT:
        return f"its format is {manifest.get('format')!r}"
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not splits:
        return "'splits' is not a non-empty object"
    for name, members in splits.items():
        if not _SPLIT_NAME.match(name):
            return f"split name {name!r} is not a plain name"
        if (
            not isinstance(members, list)
            or not all(isinstance(c, str) and c for c in members)
            or len(set(members)) != len(members)
        ):
            return f"split {name!r} is not a list of distinct class names"
    fonts = manifest.get("fonts")
    if not isinstance(fonts, list) or not fonts or not all(isinstance(f, dict) for f in fonts):
        return "'fonts' is not a non-empty list of objects"
    size = manifest.get("image_size")
    if type(size) is not int or size < 1:
        return f"'image_size' is {size!r}, not a positive integer"
    hashes = manifest.get("cache_sha256")
    if not isinstance(hashes, dict) or not all(isinstance(h, str) for h in hashes.values()):
        return "'cache_sha256' is not an object of hex digests"
    return None


def glyph_splits(root: str | os.PathLike[str]) -> tuple[str, ...]:
    """The split names of the benchmark at ``root`` (``("train", "val", "test")`` by default)."""
    splits = read_glyph_manifest(root)["splits"]
    return tuple(sorted(splits, key=lambda s: (_ORDER.get(s, len(_ORDER)), s)))


def load_glyphs(
    root: str | os.PathLike[str],
    split: str,
    image_size: int | None = None,
    *,
    verify: bool = False,
) -> LabelledImages:
    """Load one split of the glyph benchmark from its cache.

    Classes are the split's characters in codepoint order; each class has one image per font,
    fonts in manifest order (image ``i`` is class ``i // n_fonts``, font ``i % n_fonts``).

    Args:
        root: The ``--out`` directory of ``python -m episodes.glyphs``.
        split: ``"train"``, ``"val"`` or ``"test"`` (or any split the manifest lists).
        image_size: Resize to ``image_size x image_size`` with :func:`resize_images` (84 -> 28
            is an exact 3x3 area average); ``None`` keeps the built size.
        verify: Also check the cache files' SHA-256 against the manifest (reads them twice).

    Returns:
        ``LabelledImages`` with uint8 images ``[N, 1, S, S]`` (dark ink on white), int64
        labels ``[N]``, class names the characters themselves (e.g. ``"亜"``), named
        ``"glyphs/<split>"``.

    Raises:
        FileNotFoundError: ``root`` holds no built benchmark.
        ValueError: ``split`` is not in the manifest (the message lists the splits), or a
            bad ``image_size``.
        DatasetFormatError: The cache does not match the manifest (rebuild with ``--force``).
    """
    root = Path(root)
    manifest = read_glyph_manifest(root)
    splits = manifest["splits"]
    if split not in splits:
        raise ValueError(f"unknown glyph split {split!r}; {root} has splits {sorted(splits)}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    classes = tuple(splits[split])
    n_fonts, size = len(manifest["fonts"]), manifest["image_size"]
    implied = f"({len(classes)} classes x {n_fonts} fonts)"
    shape = (len(classes) * n_fonts, 1, size, size)
    images = _load(root, manifest, f"cache/{split}-images.npy", np.uint8, shape, implied, verify)
    shape = (len(classes) * n_fonts,)
    labels = _load(root, manifest, f"cache/{split}-labels.npy", np.int64, shape, implied, verify)
    labels = np.array(labels, dtype=np.int64)  # a native-order copy, not a mapping
    if not np.array_equal(labels, np.repeat(np.arange(len(classes), dtype=np.int64), n_fonts)):
        raise DatasetFormatError(
            f"{root}/cache/{split}-labels.npy does not match the manifest's {implied[1:-1]}; "
            f"{_rebuild(root)}"
        )
    data = LabelledImages(
        torch.from_numpy(images), torch.from_numpy(labels), classes, name=f"glyphs/{split}"
    )
    if image_size is not None and image_size != size:
        data = LabelledImages(
            resize_images(data.images, image_size), data.labels, classes, data.name
        )
    return data


def _rebuild(root: Path) -> str:
    return f"rebuild with `python -m episodes.glyphs --out {root} --force`"


def _load(
    root: Path,
    manifest: dict[str, Any],
    name: str,
    dtype: type[np.generic],
    shape: tuple[int, ...],
    implied: str,
    verify: bool,
) -> np.ndarray:
    """``root/name``, a ``.npy`` of ``dtype`` and ``shape``, mapped copy-on-write.

    The header is parsed and checked against ``dtype``, ``shape`` and the file size before
    anything is mapped, so a corrupt header can neither allocate nor map more than the file.
    """
    path = root / name
    if not path.is_file():
        raise DatasetFormatError(
            f"{path} is missing although {root}/manifest.json lists it; {_rebuild(root)}"
        )
    if verify:
        digest = _sha256(path)
        if digest != manifest["cache_sha256"].get(name):
            raise DatasetFormatError(
                f"{path}: SHA-256 {digest} differs from the manifest's; {_rebuild(root)}"
            )
    try:
        stored, stored_shape, fortran_order, offset = _npy_header(path)
    except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError) as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise DatasetFormatError(
            f"{path} is not a valid .npy file ({reason}); {_rebuild(root)}"
        ) from error
    expected = np.dtype(dtype)
    if stored.newbyteorder("=") != expected or stored_shape != shape or fortran_order:
        order = ", Fortran order" if fortran_order else ""
        raise DatasetFormatError(
            f"{path} holds {stored} {stored_shape}{order}, but the manifest implies "
            f"{expected} {shape} {implied}; {_rebuild(root)}"
        )
    needed = offset + math.prod(shape) * stored.itemsize
    if path.stat().st_size != needed:
        raise DatasetFormatError(
            f"{path} is {path.stat().st_size} bytes, but its header implies {needed} "
            f"(truncated or corrupt); {_rebuild(root)}"
        )
    if math.prod(shape) == 0:
        return np.empty(shape, stored)
    return np.memmap(path, dtype=stored, mode="c", offset=offset, shape=shape)


def _npy_header(path: Path) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """``(dtype, shape, fortran_order, data offset)`` from a ``.npy`` header, checked.

    Parsed here (``ast.literal_eval`` of at most 64 KiB) rather than by ``np.load``, whose
    errors and warnings vary with the damage and which can allocate what a header claims.
    """
    with path.open("rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:6] != _NPY_MAGIC or head[6] not in (1, 2, 3):
            raise ValueError("no .npy magic number and version")
        if head[6] == 1:
            (length,), start = struct.unpack("<H", head[8:10]), 10
        else:
            (length,), start = struct.unpack("<I", head[8:12]), 12
        if length > _NPY_MAX_HEADER:
            raise ValueError(f"header of {length} bytes")
        handle.seek(start)
        text = handle.read(length)
    if len(text) != length:
        raise ValueError("truncated header")
    header = ast.literal_eval(text.decode("latin1" if head[6] < 3 else "utf-8"))
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise ValueError("header is not a dict of descr, fortran_order and shape")
    shape, fortran_order = header["shape"], header["fortran_order"]
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"shape {shape!r}")
    if not isinstance(fortran_order, bool):
        raise ValueError(f"fortran_order {fortran_order!r}")
    return np.dtype(header["descr"]), shape, fortran_order, start + length


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
