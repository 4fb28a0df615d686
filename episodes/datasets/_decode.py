"""Shared image decoding for the dataset readers: files -> one uint8 ``[N, C, H, W]`` tensor.

Decoding rules, the same for every reader:

- ``channels=1`` converts to greyscale (PIL mode ``"L"``), ``channels=3`` to ``"RGB"``.
  ``channels=None`` picks 1 when every image is greyscale (modes ``1``, ``L``, ``LA``, ``I``,
  ``I;16``..., or a palette whose used colours are all grey) and 3 otherwise; greyscale images
  in a colour collection are replicated across the three channels (as PIL's ``L -> RGB``).
- An image of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (about 89 million by default;
  ``None`` lifts the bound) is refused from its header, before any pixel is decoded, with an
  :class:`ImageDecodeError`: a corrupt or hostile header can claim billions of pixels (a
  decompression bomb). PIL's ``DecompressionBombWarning`` never reaches the caller.
- 16-bit greyscale (``I;16``, ``I``) is scaled to 8 bits (``round(v / 257)``), not clipped as
  PIL's own ``convert("L")`` would. Alpha is dropped, not composited. Animated GIFs give their
  first frame. EXIF orientation is not applied (as torchvision's loader).
- ``image_size=s`` resizes every image to ``s x s`` (aspect ratio is not kept) with PIL's
  ``BOX`` filter when both sides are integer multiples of ``s`` (exact area averaging) and its
  antialiased ``BILINEAR`` filter otherwise — the same filters as
  :func:`episodes.data.resize_images`, so resizing at load time or later agrees to within one
  grey level.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetFormatError",
    "ImageDecodeError",
    "decode_images",
    "describe_path",
    "is_colour_image",
    "list_image_files",
    "list_subdirectories",
]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
"""Suffixes (compared lower-case) that :func:`list_image_files` treats as images."""

_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_PARALLEL_MIN_FILES = 64
# Serialises the (brief, header-only) Image.open calls that run under warnings.catch_warnings,
# whose save/restore of the process-wide filters is not safe from concurrent decode threads.
_OPEN_LOCK = threading.Lock()


class DatasetFormatError(ValueError):
    """Files on disk do not match the layout or format that a reader expects."""


class ImageDecodeError(DatasetFormatError):
    """An image file could not be opened or decoded; the message names the file and why."""


def describe_path(path: str | os.PathLike[str]) -> str:
    """``path`` for a message: its absolute form, then the form given when that differs.

    Args:
        path: A path as the caller gave it (relative paths are relative to the working
            directory).

    Returns:
        E.g. ``"/home/me/run/data/glyphs (given as 'data/glyphs')"`` or ``"/data/glyphs"``.
    """
    given = os.fspath(path)
    absolute = os.path.abspath(given)
    return absolute if given == absolute else f"{absolute} (given as {given!r})"


def read_manifest(path: Path, problem: Callable[[object], str | None], what: str) -> dict[str, Any]:
    """The parsed ``manifest.json`` at ``path``, checked by ``problem``.

    Args:
        path: An existing ``manifest.json``.
        problem: What makes a parsed manifest not one its builder writes, or None.
        what: E.g. "a glyph benchmark manifest (format 'metatl-glyphs', written by
            `python -m episodes.glyphs`)", for the message.

    Raises:
        DatasetFormatError: Not UTF-8 JSON, or ``problem`` names a problem.
    """
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:  # bad JSON or UTF-8, absurdly deep or long
        reason = " ".join(str(error).split())
        raise DatasetFormatError(f"{path} is not valid UTF-8 JSON: {reason}") from error
    found = problem(manifest)
    if found:
        raise DatasetFormatError(f"{path} is not {what}: {found}")
    return manifest  # type: ignore[return-value]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def list_image_files(directory: Path) -> list[Path]:
    """Image files directly inside ``directory``, sorted by file name.

    Files with a suffix in :data:`IMAGE_EXTENSIONS` (any case) count; hidden files (a name
    starting with ``"."``) and subdirectories are ignored. The order is plain code-point order
    of the names, independent of locale and file system.

    Args:
        directory: The folder to list.

    Returns:
        The image paths, sorted.
    """
    with os.scandir(directory) as entries:
        found = [
            Path(entry.path)
            for entry in entries
            if not entry.name.startswith(".")
            and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
            and entry.is_file()
        ]
    return sorted(found, key=lambda p: p.name)


def list_subdirectories(directory: Path) -> list[Path]:
    """Non-hidden subdirectories of ``directory``, sorted by name (code-point order)."""
    with os.scandir(directory) as entries:
        found = [
            Path(entry.path)
            for entry in entries
            if not entry.name.startswith(".") and entry.is_dir()
        ]
    return sorted(found, key=lambda p: p.name)


def _to_8bit(im: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer greyscale to mode ``L`` (PIL would clip at 255).

    ``round(v / 257)`` in integer arithmetic (``v / 257`` is never a tie), clipped to 0..255,
    so that the intermediate needs 4 bytes per pixel, not 8.
    """
    values = np.clip(np.asarray(im), 0, 65535).astype(np.int32, copy=False)
    values += 128
    values //= 257
    return Image.fromarray(values.astype(np.uint8), mode="L")


def _is_grey(im: Image.Image) -> bool:
    if im.mode in _GREY_MODES:
        return True
    if im.mode in ("P", "PA"):
        palette = np.asarray(im.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)
        used = [c if isinstance(c, int) else c[0] for _, c in im.getcolors(256) or []]
        colours = palette[[i for i in used if i < len(palette)]]
        return bool(np.all(colours == colours[:, :1]))
    return False


def _resize(im: Image.Image, size: int) -> Image.Image:
    width, height = im.size
    if (width, height) == (size, size):
        return im
    integer_factor = width % size == 0 and height % size == 0
    resample = Image.Resampling.BOX if integer_factor else Image.Resampling.BILINEAR
    return im.resize((size, size), resample=resample)


def _open(path: Path) -> Image.Image:
    """Open ``path`` (reads the header only), refusing more than ``MAX_IMAGE_PIXELS`` pixels.

    This is the one place that bounds the pixel count of a decoded image. ``Image.open``
    checks the size the header claims: above twice ``Image.MAX_IMAGE_PIXELS`` it raises
    ``DecompressionBombError``, above once it only warns and would go on to decode. The
    warning is made an error here, so that neither case allocates pixels or leaks a warning.
    """
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except Image.DecompressionBombWarning as warning:  # raised by the filter above
            raise Image.DecompressionBombError(str(warning)) from None


def _decode_error(path: Path, exc: BaseException) -> ImageDecodeError:
    reason = _one_line(f"{type(exc).__name__}: {exc}")
    return ImageDecodeError(f"cannot decode image {path}: {reason}")


def _decode_one(path: Path, channels: int | None, image_size: int | None) -> np.ndarray:
    """One file -> ``[H, W]`` (greyscale) or ``[H, W, 3]`` (colour) uint8."""
    try:
        with _open(path) as im:
            im.load()
            if im.mode in _WIDE_GREY_MODES:
                im = _to_8bit(im)
            if channels is None:
                target = "L" if _is_grey(im) else "RGB"
            else:
                target = "L" if channels == 1 else "RGB"
            if im.mode != target:
                im = im.convert(target)
            if image_size is not None:
                im = _resize(im, image_size)
            return np.asarray(im, dtype=np.uint8)
    except Exception as exc:  # re-raised with the file named; the cause stays chained
        raise _decode_error(path, exc) from exc


def is_colour_image(path: str | os.PathLike[str]) -> bool:
    """Whether :func:`decode_images` with ``channels=None`` treats ``path`` as colour.

    The same rule as decoding (see the module docstring), decided from the header alone
    except for palette images, whose used colours are read.

    Args:
        path: An image file.

    Returns:
        ``True`` if decoding it alone with ``channels=None`` gives 3 channels.

    Raises:
        ImageDecodeError: The file is missing, unreadable, corrupt or not an image.
    """
    path = Path(path)
    try:
        with _open(path) as im:
            if im.mode in ("P", "PA"):
                im.load()
            return not _is_grey(im)
    except Exception as exc:
        raise _decode_error(path, exc) from exc


def _decode_chunk(
    paths: Sequence[Path], channels: int | None, image_size: int | None
) -> list[np.ndarray]:
    return [_decode_one(p, channels, image_size) for p in paths]


def _default_workers() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _decoded(
    paths: Sequence[Path], channels: int | None, image_size: int | None, workers: int
) -> Iterator[np.ndarray]:
    """Decoded arrays in input order; in a thread pool when there are many files."""
    if workers <= 1 or len(paths) < _PARALLEL_MIN_FILES:
        for path in paths:
            yield _decode_one(path, channels, image_size)
        return
    step = max(1, min(256, len(paths) // (4 * workers)))
    chunks = [paths[i : i + step] for i in range(0, len(paths), step)]
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    try:
        decode = partial(_decode_chunk, channels=channels, image_size=image_size)
        for arrays in pool.map(decode, chunks):
            yield from arrays
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def decode_images(
    paths: Sequence[Path],
    channels: int | None = None,
    image_size: int | None = None,
    *,
    num_workers: int | None = None,
) -> torch.Tensor:
    """Decode image files into one uint8 tensor, in the order given.

    See the module docstring for the conversion and resizing rules. Many files are decoded
    in a thread pool (PIL releases the GIL while decoding); the output order is always the
    input order, and an error names the first failing file in that order.

    Args:
        paths: Image files, ``N >= 1`` of them.
        channels: 1 (greyscale), 3 (RGB) or ``None`` (1 if every image is greyscale, else 3).
        image_size: Resize every image to ``image_size x image_size``; ``None`` keeps the
            stored size, which must then be the same for every file.
        num_workers: Decoding threads; ``None`` uses one per available CPU, ``<= 1`` decodes
            in the calling thread.

    Returns:
        uint8 tensor ``[N, C, H, W]``.

    Raises:
        ImageDecodeError: A file is missing, unreadable, corrupt or not an image.
        DatasetFormatError: ``image_size`` is ``None`` and the images differ in size.
        ValueError: ``paths`` is empty, or ``channels`` / ``image_size`` is invalid.
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be >= 1 or None, got {image_size!r}")
    files = [Path(p) for p in paths]
    if not files:
        raise ValueError("decode_images: no image files given")
    workers = _default_workers() if num_workers is None else num_workers

    out: np.ndarray | None = None
    with closing(_decoded(files, channels, image_size, workers)) as arrays:
        for i, array in enumerate(arrays):
            out = _place(out, i, array, files, channels)
    assert out is not None
    return torch.from_numpy(out)


def _place(
    out: np.ndarray | None, i: int, array: np.ndarray, paths: list[Path], channels: int | None
) -> np.ndarray:
    """Write image ``i`` into ``out`` (allocated on the first image, widened to RGB if needed)."""
    height, width = array.shape[:2]
    if out is None:
        n_channels = channels or (3 if array.ndim == 3 else 1)
        out = np.empty((len(paths), n_channels, height, width), dtype=np.uint8)
    elif (height, width) != out.shape[2:]:
        raise DatasetFormatError(
            f"image {paths[i]} is {width}x{height} (width x height) but {paths[0]} is "
            f"{out.shape[3]}x{out.shape[2]}; images of different sizes need a common "
            f"size: pass image_size=..."
        )
    if array.ndim == 3 and out.shape[1] == 1:  # first colour image: widen what we have
        widened = np.empty((len(paths), 3, height, width), dtype=np.uint8)
        widened[:i] = out[:i]
        out = widened
    out[i] = array if array.ndim == 2 else array.transpose(2, 0, 1)
    return out
