"""Reader for the digits domain-shift benchmark built by :mod:`episodes.digits`.

Layout (``python -m episodes.digits --out ROOT``)::

    ROOT/manifest.json                  fonts (package, file, hash, split), drops, seeds, sizes
    ROOT/cache/<split>-images.npy       uint8 [N, 1, 28, 28], dark ink on white
    ROOT/cache/<split>-labels.npy       int64 [N], the digit
    ROOT/cache/<split>-fonts.npy        int64 [N], index into the manifest's fonts (source
                                        splits only)

Splits (:data:`DIGITS_SPLITS`), all of the ten classes ``"0" .. "9"``:

- ``source_train``: digits rendered from the training font families, augmented copies;
- ``source_val``: the same from the held-out font families (label-free model selection);
- ``target_train``: half of scikit-learn's handwritten digits, the target images an adaptation
  method may see. Take them through :func:`episodes.load_domain_shift`, which hands them over
  as :class:`~episodes.UnlabelledImages`; the labels stored here are for oracle analyses only;
- ``target_test``: the other half, labelled, for scoring only.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from episodes.data import LabelledImages
from episodes.datasets._decode import DatasetFormatError, describe_path, read_manifest

__all__ = [
    "DIGITS_FORMAT",
    "DIGITS_SPLITS",
    "load_digit_fonts",
    "load_digits_benchmark",
    "read_digits_manifest",
]

DIGITS_FORMAT = "metatl-digits"
DIGITS_SPLITS = ("source_train", "source_val", "target_train", "target_test")


def read_digits_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed, checked ``manifest.json`` of a digits benchmark at ``root``.

    Raises:
        FileNotFoundError: ``root`` holds no ``manifest.json`` (the message says how to build).
        DatasetFormatError: The manifest is not one the builder writes.
    """
    root = Path(root)
    path = root / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no digits benchmark at {describe_path(root)}: no manifest.json there; build one "
            "with `python -m episodes.digits --out DIR`"
        )
    what = (
        f"a digits benchmark manifest (format {DIGITS_FORMAT!r}, written by "
        "`python -m episodes.digits`)"
    )
    return read_manifest(path, _manifest_problem, what)


def _manifest_problem(manifest: object) -> str | None:
    if not isinstance(manifest, dict):
        return f"it holds a JSON {type(manifest).__name__}, not an object"
    if manifest.get("format") != DIGITS_FORMAT:
        return f"its format is {manifest.get('format')!r}"
    counts = manifest.get("splits")
    if not isinstance(counts, dict) or set(counts) != set(DIGITS_SPLITS):
        return f"'splits' does not list exactly {', '.join(DIGITS_SPLITS)}"
    if not all(type(c) is int and c >= 0 for c in counts.values()):
        return "'splits' does not give an image count per split"
    classes = manifest.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "'classes' is not a non-empty list of names"
    size = manifest.get("image_size")
    if type(size) is not int or size < 1:
        return f"'image_size' is {size!r}, not a positive integer"
    hashes = manifest.get("cache_sha256")
    if not isinstance(hashes, dict) or not all(isinstance(h, str) for h in hashes.values()):
        return "'cache_sha256' is not an object of hex digests"
    return None


def load_digits_benchmark(
    root: str | os.PathLike[str],
    split: str,
    image_size: int | None = None,
    *,
    verify: bool = False,
) -> LabelledImages:
    """One split of the digits benchmark, from its cache.

    Args:
        root: The ``--out`` directory of ``python -m episodes.digits``.
        split: One of :data:`DIGITS_SPLITS`.
        image_size: Resize to ``image_size x image_size`` (:func:`~episodes.resize_images`);
            ``None`` keeps the built size (28).
        verify: Also check the cache files' SHA-256 against the manifest.

    Returns:
        ``LabelledImages``: uint8 images ``[N, 1, S, S]`` (dark ink on white), int64 labels
        ``[N]`` (the digit), class names ``"0" .. "9"``, named ``"digits/<split>"``. Source
        images are font-major (font, then digit, then augmented copy); target images keep
        scikit-learn's order.

    Raises:
        FileNotFoundError: ``root`` holds no built benchmark.
        ValueError: ``split`` is not one of :data:`DIGITS_SPLITS`, or a bad ``image_size``.
        DatasetFormatError: The cache does not match the manifest (rebuild with ``--force``).
    """
    root = Path(root)
    manifest = read_digits_manifest(root)
    if split not in DIGITS_SPLITS:
        raise ValueError(f"unknown digits split {split!r}; splits: {', '.join(DIGITS_SPLITS)}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    n, size = manifest["splits"][split], manifest["image_size"]
    images = _load(root, manifest, f"{split}-images", np.uint8, (n, 1, size, size), verify)
    labels = np.array(_load(root, manifest, f"{split}-labels", np.int64, (n,), verify))
    classes = tuple(manifest["classes"])
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DatasetFormatError(f"{root}/cache/{split}-labels.npy: labels out of range")
    data = LabelledImages(
        torch.from_numpy(images), torch.from_numpy(labels), classes, name=f"digits/{split}"
    )
    return data if image_size is None else data.resized(image_size)


def load_digit_fonts(root: str | os.PathLike[str], split: str) -> torch.Tensor:
    """Which font drew each image of a source split: int64 ``[N]``, indices into the
    manifest's ``fonts`` list (in the order of :func:`load_digits_benchmark`'s images).

    Raises:
        ValueError: ``split`` is not ``source_train`` or ``source_val``.
    """
    if split not in DIGITS_SPLITS[:2]:
        raise ValueError(f"fonts are recorded for the source splits only, not {split!r}")
    root = Path(root)
    manifest = read_digits_manifest(root)
    n = manifest["splits"][split]
    fonts = np.array(_load(root, manifest, f"{split}-fonts", np.int64, (n,), False))
    if fonts.size and (fonts.min() < 0 or fonts.max() >= len(manifest["fonts"])):
        raise DatasetFormatError(f"{root}/cache/{split}-fonts.npy: font indices out of range")
    return torch.from_numpy(fonts)


def _load(
    root: Path,
    manifest: dict[str, Any],
    stem: str,
    dtype: type[np.generic],
    shape: tuple[int, ...],
    verify: bool,
) -> np.ndarray:
    """``root/cache/<stem>.npy``, checked against ``dtype`` and ``shape``, mapped
    copy-on-write (writing to it never changes the file)."""
    name = f"cache/{stem}.npy"
    path = root / name
    rebuild = f"rebuild with `python -m episodes.digits --out {root} --force`"
    if not path.is_file():
        raise DatasetFormatError(f"{path} is missing; {rebuild}")
    if verify:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != manifest["cache_sha256"].get(name):
            raise DatasetFormatError(f"{path}: SHA-256 differs from the manifest's; {rebuild}")
    try:
        array = np.load(path, mmap_mode="c" if math.prod(shape) else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DatasetFormatError(f"{path} is not a valid .npy file ({error}); {rebuild}") from error
    if array.dtype != np.dtype(dtype) or array.shape != shape:
        raise DatasetFormatError(
            f"{path} holds {array.dtype} {array.shape}, but the manifest implies "
            f"{np.dtype(dtype)} {shape}; {rebuild}"
        )
    return array
