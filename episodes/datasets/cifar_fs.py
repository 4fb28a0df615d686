"""Reader for CIFAR-FS (Bertinetto et al., ICLR 2019): the 100 CIFAR-100 classes split 64/16/20.

Layout: CIFAR-100's official python archive (``cifar-100-python.tar.gz``) extracted, and
Bertinetto's split files::

    root/cifar-100-python/train   50,000 images, 500 per class   Python 2 pickles of dicts
    root/cifar-100-python/test    10,000 images, 100 per class   (byte-string keys, see below)
    root/cifar-100-python/meta    the 100 fine class names
    root/splits/bertinetto/train.txt   64 fine class names, one per line
    root/splits/bertinetto/val.txt     16
    root/splits/bertinetto/test.txt    20

A split gathers the images of its classes from both ``train`` and ``test``: 600 per class.
``train``/``test`` hold ``b'data'`` (uint8 ``[N, 3072]``: per image the 32x32 red plane, then
green, then blue, each row-major) and ``b'fine_labels'`` (``N`` ints in ``0..99``, indexing
``meta``'s ``b'fine_label_names'``).

The pickles are read by :func:`read_cifar_pickle`, which never imports or calls anything but
numpy's own array reconstruction: a pickle can otherwise run arbitrary code when loaded.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO, Literal, get_args

import numpy as np
import torch

from episodes.data import LabelledImages
from episodes.datasets._decode import DatasetFormatError, describe_path

__all__ = ["CIFAR_FS_SPLITS", "CifarFSSplit", "load_cifar_fs", "read_cifar_pickle"]

CifarFSSplit = Literal["train", "val", "test"]

CIFAR_FS_SPLITS: tuple[CifarFSSplit, ...] = get_args(CifarFSSplit)

_DATA_DIR = "cifar-100-python"
_NUM_CLASSES = 100
_SIDE = 32
_ROW = 3 * _SIDE * _SIDE
_SHOWN = 5
_FIX = "re-extract cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"

# numpy names this function numpy.core.multiarray._reconstruct before 2.0 and
# numpy._core.multiarray._reconstruct since; taking it from an array avoids importing either.
_RECONSTRUCT = np.empty(0).__reduce__()[0]

# Everything a genuine CIFAR-100 pickle refers to: numpy arrays pickle as
# _reconstruct(ndarray, (0,), b"b") followed by a state holding their dtype and bytes.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


def load_cifar_fs(
    root: str | os.PathLike[str],
    split: CifarFSSplit = "train",
    *,
    image_size: int | None = None,
    split_dir: str | os.PathLike[str] | None = None,
) -> LabelledImages:
    """Load one CIFAR-FS split as RGB.

    Args:
        root: Folder holding ``cifar-100-python/``, or that folder itself.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: Resize to ``image_size x image_size`` (see
            :meth:`LabelledImages.resized`); ``None`` keeps CIFAR's 32x32.
        split_dir: Folder holding ``<split>.txt``. ``None`` looks in ``root/splits/bertinetto``,
            then ``root/splits``, then ``root``, and takes the first that has it.

    Returns:
        ``LabelledImages`` with uint8 images ``[N, 3, S, S]`` (``S`` is ``image_size`` or 32),
        int64 labels ``[N]`` and the fine class names in the order of the split file, named
        ``"cifar-fs/<split>"``. Images are grouped by class in that order; within a class,
        those of the official ``train`` file come first, then those of ``test``, each in file
        order.

    Raises:
        ValueError: ``split`` is not one of the three above, or ``image_size < 1``.
        FileNotFoundError: ``root``, a pickle or the split file is missing (the message gives
            every place looked at).
        DatasetFormatError: A pickle is corrupt, refers to anything but numpy arrays, or does
            not hold what CIFAR-100 does; the split file names an unknown class, a class
            twice or a class of another split file next to it.
    """
    if split not in CIFAR_FS_SPLITS:
        raise ValueError(f"split must be one of {CIFAR_FS_SPLITS}, got {split!r}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be >= 1 or None, got {image_size!r}")
    root = Path(root)
    data_dir = _find_data_dir(root)
    split_path = _find_split_file(root, split, split_dir)
    class_names = _read_class_names(data_dir / "meta")
    names = _read_split(split_path, set(class_names))
    _check_disjoint(split_path, split, names)
    remap = np.full(_NUM_CLASSES, -1, dtype=np.int64)
    remap[[class_names.index(name) for name in names]] = np.arange(len(names))
    parts = [_select(*_read_batch(data_dir / part), remap) for part in ("train", "test")]
    images, labels = _group_by_class(parts)
    dataset = LabelledImages(images, labels, tuple(names), name=f"cifar-fs/{split}")
    return dataset if image_size is None else dataset.resized(image_size)


def read_cifar_pickle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one CIFAR-100 python pickle (``train``, ``test`` or ``meta``) without running code.

    The unpickler builds only dicts, lists, tuples, numbers, strings and numpy arrays: any
    other global the file refers to (a function it would call, e.g. ``os.system``) is refused
    before it is imported. Python 2 strings come back as ``bytes``, as with
    ``pickle.load(f, encoding="bytes")``.

    Args:
        path: The pickle.

    Returns:
        The top-level dict, its byte-string keys decoded (``b"data"`` -> ``"data"``); the
        values as stored (e.g. ``"data"``: uint8 array ``[N, 3072]``, ``"fine_labels"``: list
        of ``N`` ints, ``"fine_label_names"``: list of bytes).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        DatasetFormatError: The file cannot be read, is not a pickle or is truncated, refers
            to a global other than numpy's array reconstruction, or does not hold a dict with
            string keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-100 file {describe_path(path)} not found; {_FIX}")
    try:
        with path.open("rb") as handle:
            loaded = _CifarUnpickler(handle, path).load()
    except DatasetFormatError:
        raise
    except Exception as exc:  # a corrupt pickle can raise almost any exception type
        raise DatasetFormatError(
            _one_line(f"cannot read CIFAR-100 pickle {path}: {type(exc).__name__}: {exc}; {_FIX}")
        ) from exc
    if not isinstance(loaded, dict) or not all(isinstance(k, bytes | str) for k in loaded):
        raise DatasetFormatError(
            f"{path} holds a {type(loaded).__name__}, not a dict with string keys; "
            f"not a CIFAR-100 file: {_FIX}"
        )
    return {_text(key): value for key, value in loaded.items()}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED_GLOBALS``, and imports nothing."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        super().__init__(handle, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise DatasetFormatError(
                _one_line(
                    f"{self._path}: refusing to load {module}.{name}: not a CIFAR-100 file "
                    f"(genuine ones refer to numpy arrays only); {_FIX}"
                )
            )
        return found


def _find_data_dir(root: Path) -> Path:
    """``root/cifar-100-python`` if it exists, else ``root`` if it holds the pickles."""
    nested = root / _DATA_DIR
    if nested.is_dir():
        return nested
    if all((root / part).is_file() for part in ("train", "test", "meta")):
        return root
    raise FileNotFoundError(
        f"CIFAR-100 folder not found: neither {describe_path(nested)} nor "
        f"{describe_path(root)} holds the pickles train, test and meta; {_FIX} into root"
    )


def _split_dirs(root: Path, split_dir: str | os.PathLike[str] | None) -> list[Path]:
    if split_dir is not None:
        return [Path(split_dir)]
    return [root / "splits" / "bertinetto", root / "splits", root]


def _find_split_file(root: Path, split: str, split_dir: str | os.PathLike[str] | None) -> Path:
    """The first ``<split>.txt`` among :func:`_split_dirs`."""
    candidates = [folder / f"{split}.txt" for folder in _split_dirs(root, split_dir)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(describe_path(candidate) for candidate in candidates)
    raise FileNotFoundError(
        f"CIFAR-FS split file {split}.txt not found; looked for {tried}; put Bertinetto's "
        "splits/bertinetto/{train,val,test}.txt (one CIFAR-100 class name per line) under "
        "root, or pass split_dir= the folder holding them"
    )


def _read_class_names(path: Path) -> list[str]:
    """The 100 fine class names of ``meta``, indexed by label."""
    names = read_cifar_pickle(path).get("fine_label_names")
    if (
        not isinstance(names, list)
        or len(names) != _NUM_CLASSES
        or not all(isinstance(name, bytes | str) for name in names)
    ):
        raise DatasetFormatError(
            f"{path}: 'fine_label_names' is missing or not a list of {_NUM_CLASSES} names; "
            f"not a CIFAR-100 meta file: {_FIX}"
        )
    decoded = [_text(name) for name in names]
    if len(set(decoded)) != _NUM_CLASSES:
        raise DatasetFormatError(f"{path}: 'fine_label_names' repeats names; {_FIX}")
    return decoded


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``(data, labels)`` of ``train`` or ``test``: uint8 ``[N, 3072]``, int64 ``[N]``."""
    batch = read_cifar_pickle(path)
    data, labels = batch.get("data"), batch.get("fine_labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (_ROW,):
        if isinstance(data, np.ndarray):
            found = f"a {data.dtype} array of shape {data.shape}"
        else:
            found = "missing" if data is None else f"a {type(data).__name__}"
        raise DatasetFormatError(
            f"{path}: 'data' is {found}, expected a uint8 array [N, {_ROW}] (N RGB images of "
            f"{_SIDE}x{_SIDE}); not a CIFAR-100 file: {_FIX}"
        )
    if not isinstance(labels, list) or not all(type(label) is int for label in labels):
        raise DatasetFormatError(
            f"{path}: 'fine_labels' is missing or not a list of ints; not a CIFAR-100 file: {_FIX}"
        )
    if len(labels) != len(data):
        raise DatasetFormatError(
            f"{path} holds {len(data)} images but {len(labels)} fine labels; {_FIX}"
        )
    if labels and (min(labels) < 0 or max(labels) >= _NUM_CLASSES):
        raise DatasetFormatError(
            f"{path}: fine labels span {min(labels)}..{max(labels)}, outside "
            f"0..{_NUM_CLASSES - 1}; {_FIX}"
        )
    return data, np.array(labels, dtype=np.int64)


def _read_split(path: Path, known: set[str]) -> list[str]:
    """The class names of a split file, checked against the CIFAR-100 names in ``known``."""
    names = _split_names(path)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise DatasetFormatError(
            f"{path} names {len(unknown)} classes that are not CIFAR-100 fine classes, the "
            f"first being {', '.join(map(repr, unknown[:_SHOWN]))}; each line must be a name "
            f"from {_DATA_DIR}/meta (e.g. 'aquarium_fish')"
        )
    return names


def _split_names(path: Path) -> list[str]:
    """The non-blank, stripped lines of a split file, each at most once."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(_one_line(f"{path} is not UTF-8 text: {exc}")) from exc
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise DatasetFormatError(f"{path} lists no classes; expected one class name per line")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DatasetFormatError(
            f"{path} lists {', '.join(map(repr, repeated[:_SHOWN]))} more than once"
        )
    return names


def _check_disjoint(path: Path, split: str, names: list[str]) -> None:
    """Refuse a split sharing classes with the other split files present next to it."""
    for other in CIFAR_FS_SPLITS:
        other_path = path.with_name(f"{other}.txt")
        if other == split or not other_path.is_file():
            continue
        other_names = set(_split_names(other_path))
        shared = [name for name in names if name in other_names]
        if shared:
            raise DatasetFormatError(
                f"{path} and {other_path} share {len(shared)} classes, the first being "
                f"{', '.join(map(repr, shared[:_SHOWN]))}; CIFAR-FS splits must be disjoint"
            )


def _select(
    data: np.ndarray, labels: np.ndarray, remap: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The rows of the split's classes: images ``[M, 3, 32, 32]``, split labels ``[M]``."""
    new_labels = remap[labels]
    keep = new_labels >= 0
    return data[keep].reshape(-1, 3, _SIDE, _SIDE), new_labels[keep]


def _group_by_class(
    parts: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate ``parts`` and order by label, stably (file order within each class)."""
    images = np.concatenate([part_images for part_images, _ in parts])
    labels = np.concatenate([part_labels for _, part_labels in parts])
    order = np.argsort(labels, kind="stable")
    return torch.from_numpy(images[order]), torch.from_numpy(labels[order])


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _one_line(text: str) -> str:
    return " ".join(text.split())
