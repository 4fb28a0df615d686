"""Reader for Fashion-MNIST (Xiao et al., 2017) IDX files, as Debian's package installs them.

``apt-get install dataset-fashion-mnist`` puts
``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``;
the same names without ``.gz`` are read too. The IDX format is parsed here with numpy: a
big-endian int32 magic (2051 for uint8 images of 3 dimensions, 2049 for uint8 labels of 1),
then one big-endian int32 per dimension, then the data.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Literal, get_args

import numpy as np
import torch

from episodes.data import LabelledImages
from episodes.datasets._decode import DatasetFormatError, describe_path

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "FashionMNISTSplit",
    "load_fashion_mnist",
    "read_idx",
]

FashionMNISTSplit = Literal["train", "test"]

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049
_SIDE = 28
_BLOCK = 1 << 20


def load_fashion_mnist(
    root: str | os.PathLike[str] = FASHION_MNIST_ROOT,
    split: FashionMNISTSplit = "train",
) -> LabelledImages:
    """Load a Fashion-MNIST split (60,000 train or 10,000 test images, 28x28 greyscale).

    Args:
        root: Folder holding the four IDX files (gzip'd or not).
        split: ``"train"`` (files ``train-*``) or ``"test"`` (files ``t10k-*``).

    Returns:
        ``LabelledImages`` with uint8 images ``[N, 1, 28, 28]``, int64 labels ``[N]`` and the
        ten official class names, named ``"fashion-mnist/<split>"``.

    Raises:
        ValueError: ``split`` is not ``"train"`` or ``"test"``.
        FileNotFoundError: A file is missing (the message gives the absolute path looked at
            and says how to install the files).
        DatasetFormatError: A file is not valid IDX, the images are not 28x28, or images and
            labels disagree.
    """
    if split not in get_args(FashionMNISTSplit):
        raise ValueError(f"split must be one of {get_args(FashionMNISTSplit)}, got {split!r}")
    root = Path(root)
    prefix = "train" if split == "train" else "t10k"
    images_path = _find(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(root, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, _IMAGES_MAGIC)
    labels = read_idx(labels_path, _LABELS_MAGIC)
    if images.shape[1:] != (_SIDE, _SIDE):
        raise DatasetFormatError(
            f"{images_path} holds images of {images.shape[1]}x{images.shape[2]} pixels; "
            f"Fashion-MNIST images are {_SIDE}x{_SIDE}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DatasetFormatError(f"{labels_path}: label {int(labels.max())} is out of range 0..9")
    return LabelledImages(
        images=torch.from_numpy(images).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        class_names=FASHION_MNIST_CLASSES,
        name=f"fashion-mnist/{split}",
    )


def read_idx(path: str | os.PathLike[str], magic: int) -> np.ndarray:
    """Read a uint8 IDX file (optionally gzip'd, by its ``.gz`` suffix) into a numpy array.

    Args:
        path: The file.
        magic: The expected magic number: 2051 for images ``[N, H, W]``, 2049 for labels
            ``[N]`` (``0x0800 + number of dimensions``; only uint8 data are supported).

    Returns:
        A writable uint8 array whose shape is the dimensions stored in the header.

    Raises:
        ValueError: ``magic`` is not that of a uint8 IDX file.
        DatasetFormatError: The file cannot be read or decompressed, wrong magic number,
            truncated header, negative dimensions, or a data size that does not match the
            header. Memory follows the data actually present, never the header's claim.
    """
    if not 0x0801 <= magic <= 0x08FF:
        raise ValueError(f"magic must be 0x0800 + ndim for uint8 IDX data, got {magic}")
    path = Path(path)
    ndim = magic - 0x0800
    header_size = 4 * (1 + ndim)
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as handle:
            header = _read_at_most(handle, header_size)
            dims = _parse_header(path, header, magic)
            size = header_size + math.prod(dims)
            if path.suffix != ".gz":  # the size is known: check it before reading
                stored = os.fstat(handle.fileno()).st_size
                if stored != size:
                    raise DatasetFormatError(_size_mismatch(path, dims, size, f"{stored} bytes"))
            data = _read_at_most(handle, size - header_size + 1)  # never more than claimed
    except (OSError, EOFError, zlib.error) as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise DatasetFormatError(f"cannot read IDX file {path}: {reason}") from exc
    if header_size + len(data) != size:
        held = "more" if header_size + len(data) > size else f"{header_size + len(data)} bytes"
        raise DatasetFormatError(_size_mismatch(path, dims, size, held))
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _parse_header(path: Path, header: bytes, magic: int) -> tuple[int, ...]:
    """The dimensions of a checked IDX header (magic, then one big-endian int32 each)."""
    if len(header) < 4 * (1 + magic - 0x0800):
        raise DatasetFormatError(
            f"{path} is {len(header)} bytes, too short for an IDX header of "
            f"{4 * (1 + magic - 0x0800)} bytes"
        )
    found = int.from_bytes(header[:4], "big")
    if found != magic:
        raise DatasetFormatError(
            f"{path}: IDX magic number is {found}, expected {magic}; the file is not the "
            "expected IDX file, or is corrupt"
        )
    dims = struct.unpack(f">{magic - 0x0800}i", header[4:])
    if min(dims) < 0:
        raise DatasetFormatError(f"{path}: IDX header has negative dimensions {dims}")
    return dims


def _size_mismatch(path: Path, dims: tuple[int, ...], size: int, held: str) -> str:
    return (
        f"{path}: header says dimensions {dims} ({size} bytes with the header), "
        f"but the file holds {held}"
    )


def _read_at_most(handle: BinaryIO, limit: int) -> bytearray:
    """Up to ``limit`` bytes, read in blocks, so that memory follows the data, not ``limit``."""
    data = bytearray()
    while len(data) < limit:
        block = handle.read(min(_BLOCK, limit - len(data)))
        if not block:
            break
        data += block
    return data


def _find(root: Path, stem: str) -> Path:
    """``root/stem`` if present, else ``root/stem.gz``."""
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    missing = "" if root.is_dir() else ", which does not exist"
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}.gz (or {stem}, uncompressed) not found in "
        f"{describe_path(root)}{missing}; on Debian/Ubuntu `apt-get install "
        f"dataset-fashion-mnist` installs it under {FASHION_MNIST_ROOT}, or pass root= the "
        "folder holding the IDX files"
    )
