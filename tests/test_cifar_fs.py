"""CIFAR-FS reader, on a tiny CIFAR-100 laid out exactly as the official archive ships.

The fixture pickles are written the way Python 2's cPickle wrote the real files (protocol 2,
``str`` as ``BINSTRING``), so they refer to the same globals and load the same way.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import re
import shlex
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from episodes.data import resize_images
from episodes.datasets._decode import DatasetFormatError
from episodes.datasets.cifar_fs import CIFAR_FS_SPLITS, load_cifar_fs, read_cifar_pickle

CIFAR100_CLASSES = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
]
assert len(CIFAR100_CLASSES) == 100 and sorted(CIFAR100_CLASSES) == CIFAR100_CLASSES

COARSE_CLASSES = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
]

# Bertinetto's train.txt starts with "train", "skyscraper": the split order is not alphabetical.
SPLITS = {
    "train": ("train", "skyscraper", "apple"),
    "val": ("baby", "bear"),
    "test": ("aquarium_fish", "beaver"),
}
UNUSED = ("bed",)  # in the pickles but in no split
PER_CLASS = {"train": 3, "test": 2}  # images per class in each official file (500 / 100)
PARTS = ("train", "test")
N_TRAIN = PER_CLASS["train"] * (sum(map(len, SPLITS.values())) + len(UNUSED))


# --------------------------------------------------------------------------- fixture


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol-2 pickler writing ``bytes`` and ``str`` as Python 2 ``str`` (``BINSTRING``)."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes | str) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def _py2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _dump(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_py2_pickle(obj))
    return path


def _image(part: int, k: int, fine: int) -> np.ndarray:
    """Image ``k`` of file ``part`` (0 train, 1 test), uint8 ``[3, 32, 32]``.

    Red is ``10 + 100 * part + k`` (unique per image), green ``20 + fine``, and blue varies
    with the position so that a transposed or shifted plane shows.
    """
    red = np.full((32, 32), 10 + 100 * part + k)
    green = np.full((32, 32), 20 + fine)
    blue = (np.arange(32 * 32).reshape(32, 32) * 7 + k) % 256
    return np.stack([red, green, blue]).astype(np.uint8)


def _file_labels(seed: int) -> dict[str, list[int]]:
    """Fine labels of the rows of ``train`` and ``test``, classes interleaved."""
    rng = np.random.default_rng(seed)
    used = [CIFAR100_CLASSES.index(n) for names in (*SPLITS.values(), UNUSED) for n in names]
    return {part: rng.permutation(np.repeat(used, PER_CLASS[part])).tolist() for part in PARTS}


def _batch(part: str, labels: list[int]) -> dict[bytes, Any]:
    """A dict as in ``cifar-100-python/{train,test}``, with the same keys in the same order."""
    index = PARTS.index(part)
    rows = [_image(index, k, fine).reshape(-1) for k, fine in enumerate(labels)]
    return {
        b"filenames": [f"img_{k:05d}.png".encode() for k in range(len(labels))],
        b"batch_label": f"{'training' if part == 'train' else 'testing'} batch 1 of 1".encode(),
        b"fine_labels": labels,
        b"coarse_labels": [fine // 5 for fine in labels],
        b"data": np.stack(rows),
    }


def _write_cifar(root: Path, seed: int = 0) -> dict[str, list[int]]:
    """``root/cifar-100-python/{train,test,meta}`` and ``root/splits/bertinetto/*.txt``."""
    labels = _file_labels(seed)
    data_dir = root / "cifar-100-python"
    for part in PARTS:
        _dump(data_dir / part, _batch(part, labels[part]))
    meta = {
        b"fine_label_names": [name.encode() for name in CIFAR100_CLASSES],
        b"coarse_label_names": [name.encode() for name in COARSE_CLASSES],
    }
    _dump(data_dir / "meta", meta)
    _write_splits(root / "splits" / "bertinetto", SPLITS)
    return labels


def _write_splits(folder: Path, splits: dict[str, tuple[str, ...]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in splits.items():
        (folder / f"{split}.txt").write_text("".join(f"{name}\n" for name in names))


def _expected(labels: dict[str, list[int]], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[N, 3, 32, 32]`` and labels ``[N]``: class by class, train file then test."""
    images, targets = [], []
    for target, name in enumerate(SPLITS[split]):
        fine = CIFAR100_CLASSES.index(name)
        for index, part in enumerate(PARTS):
            for k, label in enumerate(labels[part]):
                if label == fine:
                    images.append(_image(index, k, fine))
                    targets.append(target)
    return torch.from_numpy(np.stack(images)), torch.tensor(targets)


@pytest.fixture
def cifar(tmp_path: Path) -> tuple[Path, dict[str, list[int]]]:
    return tmp_path, _write_cifar(tmp_path)


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("split", CIFAR_FS_SPLITS)
def test_split_gathers_both_files_in_split_file_order(
    cifar: tuple[Path, dict[str, list[int]]], split: str
) -> None:
    root, labels = cifar
    ds = load_cifar_fs(root, split)
    images, targets = _expected(labels, split)
    assert ds.name == f"cifar-fs/{split}"
    assert ds.class_names == SPLITS[split]
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(targets), 3, 32, 32)
    assert ds.labels.dtype == torch.int64
    assert ds.class_counts().tolist() == [sum(PER_CLASS.values())] * len(SPLITS[split])
    assert torch.equal(ds.labels, targets)
    assert torch.equal(ds.images, images)


def test_pixels_follow_the_rgb_plane_layout(cifar: tuple[Path, dict[str, list[int]]]) -> None:
    root, labels = cifar
    ds = load_cifar_fs(root, "train")
    fine = CIFAR100_CLASSES.index("train")
    k = labels["train"].index(fine)  # the first image of class "train" in the train file
    image = ds.images[0].numpy()
    assert (image[0] == 10 + k).all() and (image[1] == 20 + fine).all()
    # blue[r, c] = (7 * (32 r + c) + k) % 256: byte 2048 + 32 r + c of the row, row-major
    assert image[2, 0, 1] == (7 + k) % 256
    assert image[2, 1, 0] == (7 * 32 + k) % 256
    assert image[2, 31, 30] == (7 * (32 * 31 + 30) + k) % 256
    test_k = labels["test"].index(fine)  # the first of class "train" in the test file
    assert (ds.images[PER_CLASS["train"], 0] == 110 + test_k).all()


def test_image_size_resizes(cifar: tuple[Path, dict[str, list[int]]]) -> None:
    root, _ = cifar
    full = load_cifar_fs(root, "val")
    half = load_cifar_fs(root, "val", image_size=16)
    assert torch.equal(half.images, resize_images(full.images, 16))
    assert torch.equal(half.labels, full.labels) and half.class_names == full.class_names
    assert load_cifar_fs(root, "val", image_size=84).image_shape == (3, 84, 84)
    assert torch.equal(load_cifar_fs(root, "val", image_size=32).images, full.images)
    with pytest.raises(ValueError, match="image_size"):
        load_cifar_fs(root, "val", image_size=0)
    with pytest.raises(ValueError, match="split must be one of"):
        load_cifar_fs(root, "validation")  # type: ignore[arg-type]


def test_root_may_be_the_data_folder_and_split_dir_search_order(
    cifar: tuple[Path, dict[str, list[int]]],
) -> None:
    root, _ = cifar
    data_dir = root / "cifar-100-python"
    _write_splits(data_dir, {"val": ("bear",)})  # root itself, the last place looked at
    assert load_cifar_fs(data_dir, "val").class_names == ("bear",)
    _write_splits(data_dir / "splits", {"val": ("baby",)})  # root/splits comes before root
    assert load_cifar_fs(data_dir, "val").class_names == ("baby",)
    _write_splits(data_dir / "splits" / "bertinetto", {"val": ("bear", "baby")})  # first
    assert load_cifar_fs(data_dir, "val").class_names == ("bear", "baby")
    explicit = load_cifar_fs(data_dir, "val", split_dir=root / "splits" / "bertinetto")
    assert explicit.class_names == SPLITS["val"]


def test_read_cifar_pickle_decodes_keys_and_keeps_bytes(
    cifar: tuple[Path, dict[str, list[int]]],
) -> None:
    root, labels = cifar
    batch = read_cifar_pickle(root / "cifar-100-python" / "test")
    assert list(batch) == ["filenames", "batch_label", "fine_labels", "coarse_labels", "data"]
    assert batch["fine_labels"] == labels["test"]
    assert batch["batch_label"] == b"testing batch 1 of 1"
    assert batch["data"].dtype == np.uint8 and batch["data"].shape == (len(labels["test"]), 3072)
    meta = read_cifar_pickle(root / "cifar-100-python" / "meta")
    assert meta["fine_label_names"][:2] == [b"apple", b"aquarium_fish"]


def test_python3_repickled_files_load_too(cifar: tuple[Path, dict[str, list[int]]]) -> None:
    root, _ = cifar
    data_dir = root / "cifar-100-python"
    before = load_cifar_fs(root, "test")
    for part in ("train", "test", "meta"):
        loaded = pickle.loads((data_dir / part).read_bytes(), encoding="bytes")
        (data_dir / part).write_bytes(pickle.dumps(loaded, protocol=4))
    after = load_cifar_fs(root, "test")
    assert torch.equal(after.images, before.images) and torch.equal(after.labels, before.labels)


# --------------------------------------------------------------------------- safety


def _make_marker(path: bytes | str) -> None:
    Path(os.fsdecode(path)).write_text("executed")


class _Payload:
    """Pickles as a call of ``func(*args)``, run by any unpickler that resolves ``func``."""

    def __init__(self, func: Callable[..., object], *args: str) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, ...]]:
        return self.func, self.args


def _payload(kind: str, marker: Path) -> _Payload:
    if kind == "function":
        return _Payload(_make_marker, str(marker))
    if kind == "os.system":
        return _Payload(os.system, f"touch {shlex.quote(str(marker))}")
    return _Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()")


@pytest.mark.parametrize("target", ["train", "meta"])
@pytest.mark.parametrize("kind", ["function", "os.system", "eval"])
def test_malicious_pickle_is_refused_without_running_it(
    cifar: tuple[Path, dict[str, list[int]]], kind: str, target: str
) -> None:
    root, labels = cifar
    marker = root / "executed"
    payload = _payload(kind, marker)
    path = root / "cifar-100-python" / target
    if target == "train":
        _dump(path, {**_batch("train", labels["train"]), b"filenames": payload})
    else:
        _dump(path, payload)
    func = payload.func
    with pytest.raises(DatasetFormatError) as info:
        load_cifar_fs(root, "train")
    assert not marker.exists()
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert re.search(rf"refusing to load \S+\.{func.__name__}: not a CIFAR-100 file", message)
    with pytest.raises(DatasetFormatError, match="refusing to load"):
        read_cifar_pickle(path)
    assert not marker.exists()
    # The same file does run its payload under a plain unpickler: the marker would show it.
    pickle.loads(path.read_bytes(), encoding="bytes")
    assert marker.exists()


def test_every_global_but_numpy_arrays_is_refused(tmp_path: Path) -> None:
    path = _dump(tmp_path / "meta", {b"fine_label_names": _Payload(list, "abc")})
    with pytest.raises(DatasetFormatError, match=r"refusing to load __builtin__\.list"):
        read_cifar_pickle(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8)}, protocol=5))
    with pytest.raises(DatasetFormatError, match=r"refusing to load numpy\S*_frombuffer"):
        read_cifar_pickle(path)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("keep", [0, 1, 40, 0.5, -1])
def test_truncated_or_garbage_pickle(cifar: tuple[Path, dict[str, list[int]]], keep: float) -> None:
    root, _ = cifar
    path = root / "cifar-100-python" / "train"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(
        DatasetFormatError, match=rf"cannot read CIFAR-100 pickle {re.escape(str(path))}"
    ) as info:
        load_cifar_fs(root, "train")
    assert "\n" not in str(info.value)
    path.write_bytes(b"\x89PNG\r\n\x1a\n not a pickle at all")
    with pytest.raises(
        DatasetFormatError, match=rf"cannot read CIFAR-100 pickle {re.escape(str(path))}"
    ):
        read_cifar_pickle(path)


def _broken(batch: dict[bytes, Any], key: bytes, value: object) -> dict[bytes, Any]:
    return {**batch, key: value} if value is not None else {k: batch[k] for k in batch if k != key}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            b"data",
            np.zeros((N_TRAIN, 3071), np.uint8),
            rf"uint8 array of shape \({N_TRAIN}, 3071\)",
        ),
        (b"data", np.zeros((N_TRAIN, 3, 32, 32), np.uint8), r", 3, 32, 32\), expected a uint8"),
        (b"data", np.zeros((N_TRAIN, 3072), np.float32), r"'data' is a float32 array"),
        (b"data", None, r"'data' is missing"),
        (b"fine_labels", [0] * (N_TRAIN - 1), rf"{N_TRAIN} images but {N_TRAIN - 1} fine labels"),
        (b"fine_labels", [0] * (N_TRAIN - 1) + [100], r"labels span 0\.\.100, outside 0\.\.99"),
        (b"fine_labels", [0] * (N_TRAIN - 1) + [b"x"], r"'fine_labels' is missing or not a list"),
        (b"fine_labels", None, r"'fine_labels' is missing"),
    ],
)
def test_wrong_structure_is_a_format_error(
    cifar: tuple[Path, dict[str, list[int]]], key: bytes, value: object, message: str
) -> None:
    root, labels = cifar
    path = root / "cifar-100-python" / "train"
    assert len(labels["train"]) == N_TRAIN
    _dump(path, _broken(_batch("train", labels["train"]), key, value))
    with pytest.raises(DatasetFormatError, match=message) as info:
        load_cifar_fs(root, "train")
    assert str(path) in str(info.value)


def test_wrong_top_level_or_meta(cifar: tuple[Path, dict[str, list[int]]]) -> None:
    root, _ = cifar
    meta = root / "cifar-100-python" / "meta"
    _dump(meta, [b"apple"])
    with pytest.raises(DatasetFormatError, match=r"holds a list, not a dict"):
        load_cifar_fs(root, "train")
    _dump(meta, {b"fine_label_names": [name.encode() for name in CIFAR100_CLASSES[:99]]})
    with pytest.raises(DatasetFormatError, match=r"meta: 'fine_label_names' .* list of 100 names"):
        load_cifar_fs(root, "train")


def test_missing_split_file_names_every_place_tried(
    cifar: tuple[Path, dict[str, list[int]]],
) -> None:
    root, _ = cifar
    (root / "splits" / "bertinetto" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"val\.txt not found") as info:
        load_cifar_fs(root, "val")
    message = str(info.value)
    for place in (root / "splits" / "bertinetto", root / "splits", root):
        assert str(place / "val.txt") in message
    with pytest.raises(FileNotFoundError, match="split_dir=") as info:
        load_cifar_fs(root, "val", split_dir=root / "elsewhere")
    assert str(root / "elsewhere" / "val.txt") in str(info.value)
    assert str(root / "splits" / "val.txt") not in str(info.value)


def test_missing_data(cifar: tuple[Path, dict[str, list[int]]]) -> None:
    root, _ = cifar
    (root / "cifar-100-python" / "test").unlink()
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python/test not found.*cifar\.html"):
        load_cifar_fs(root, "train")
    with pytest.raises(FileNotFoundError, match=r"neither .*nowhere/cifar-100-python nor"):
        load_cifar_fs(root / "nowhere", "train")


def test_unknown_class_name_in_split_file(cifar: tuple[Path, dict[str, list[int]]]) -> None:
    root, _ = cifar
    _write_splits(root / "splits" / "bertinetto", {"test": ("beaver", "apples", "Baby")})
    with pytest.raises(DatasetFormatError, match=r"test\.txt names 2 classes .*'apples', 'Baby'"):
        load_cifar_fs(root, "test")
    _write_splits(root / "splits" / "bertinetto", {"test": ("beaver", "worm", " beaver ")})
    with pytest.raises(DatasetFormatError, match=r"test\.txt lists 'beaver' more than once"):
        load_cifar_fs(root, "test")
    _write_splits(root / "splits" / "bertinetto", {"test": ("",)})
    with pytest.raises(DatasetFormatError, match=r"test\.txt lists no classes"):
        load_cifar_fs(root, "test")


def test_split_overlapping_another_split_is_refused(
    cifar: tuple[Path, dict[str, list[int]]],
) -> None:
    root, _ = cifar
    folder = root / "splits" / "bertinetto"
    _write_splits(folder, {"val": ("baby", "apple", "bear")})
    for split, other in (("val", "train"), ("train", "val")):
        with pytest.raises(DatasetFormatError, match=rf"{split}\.txt and .*{other}\.txt share 1 "):
            load_cifar_fs(root, split)
    assert load_cifar_fs(root, "test").class_names == SPLITS["test"]
