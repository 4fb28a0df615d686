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

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from episodes.data import LabelledImages, resize_images
from episodes.datasets._decode import DatasetFormatError

__all__ = ["glyph_splits", "load_glyphs", "read_glyph_manifest"]

_FORMAT = "metatl-glyphs"
_ORDER = {"train": 0, "val": 1, "test": 2}


def read_glyph_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a glyph benchmark at ``root``.

    Raises:
        FileNotFoundError: ``root`` holds no built benchmark (the message says how to build it).
        DatasetFormatError: The manifest is not a glyph benchmark manifest.
    """
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no glyph benchmark at {root} ({path} not found): build it with "
            f"`python -m episodes.glyphs --out {root}` (or `make glyphs`)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetFormatError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise DatasetFormatError(f"{path} is not a glyph benchmark manifest (format {_FORMAT!r})")
    return manifest


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
    n_fonts, size = len(manifest["fonts"]), int(manifest["image_size"])
    images = _load(root, manifest, f"cache/{split}-images.npy", verify, mmap=True)
    labels = _load(root, manifest, f"cache/{split}-labels.npy", verify)
    expected = (len(classes) * n_fonts, 1, size, size)
    if images.dtype != np.uint8 or images.shape != expected:
        raise DatasetFormatError(
            f"{root}/cache/{split}-images.npy holds {images.dtype} {images.shape}, but the "
            f"manifest implies uint8 {expected} ({len(classes)} classes x {n_fonts} fonts); "
            f"rebuild with `python -m episodes.glyphs --out {root} --force`"
        )
    expected_labels = np.repeat(np.arange(len(classes), dtype=np.int64), n_fonts)
    if labels.dtype != np.int64 or not np.array_equal(labels, expected_labels):
        raise DatasetFormatError(
            f"{root}/cache/{split}-labels.npy does not match the manifest's {len(classes)} "
            f"classes x {n_fonts} fonts; rebuild with `python -m episodes.glyphs --out {root} "
            "--force`"
        )
    data = LabelledImages(
        torch.from_numpy(images), torch.from_numpy(labels), classes, name=f"glyphs/{split}"
    )
    if image_size is not None and image_size != size:
        data = LabelledImages(
            resize_images(data.images, image_size), data.labels, classes, data.name
        )
    return data


def _load(
    root: Path, manifest: dict[str, Any], name: str, verify: bool, mmap: bool = False
) -> np.ndarray:
    path = root / name
    if not path.is_file():
        raise DatasetFormatError(
            f"{path} is missing although {root}/manifest.json lists it; rebuild with "
            f"`python -m episodes.glyphs --out {root} --force`"
        )
    if verify:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != manifest.get("cache_sha256", {}).get(name):
            raise DatasetFormatError(
                f"{path}: SHA-256 {digest} differs from the manifest's; rebuild with "
                f"`python -m episodes.glyphs --out {root} --force`"
            )
    try:
        return np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False)
    except ValueError as error:
        raise DatasetFormatError(f"{path} is not a valid .npy file: {error}") from error
