"""Dataset readers, each checked on small files laid out exactly as the real dataset ships."""

from __future__ import annotations

import csv
import gzip
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from episodes.data import resize_images
from episodes.datasets import colour_images, is_colour_image, load_glyphs
from episodes.datasets._decode import (
    DatasetFormatError,
    ImageDecodeError,
    decode_images,
    list_image_files,
)
from episodes.datasets.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    load_fashion_mnist,
    read_idx,
)
from episodes.datasets.image_folder import load_image_folder
from episodes.datasets.mini_imagenet import load_mini_imagenet
from episodes.datasets.omniglot import load_omniglot

# --------------------------------------------------------------------------- helpers


def _save(path: Path, array: np.ndarray, **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


def _corrupt(path: Path) -> Path:
    """A file that starts like a PNG and then stops."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 8)
    return path


# --------------------------------------------------------------------------- decoding


def test_list_image_files_sorted_case_insensitive_skips_hidden(tmp_path: Path) -> None:
    grey = np.zeros((4, 4), np.uint8)
    for name in ["b.PNG", "a.jpg", "c.Jpeg", "d.bmp", "e.gif", "f.webp", ".hidden.png"]:
        _save(tmp_path / name, grey)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub.png").mkdir()
    names = [p.name for p in list_image_files(tmp_path)]
    assert names == ["a.jpg", "b.PNG", "c.Jpeg", "d.bmp", "e.gif", "f.webp"]


def test_decode_parallel_keeps_input_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, (130, 6, 5), dtype=np.uint8)
    paths = [_save(tmp_path / f"{i:03d}.png", a) for i, a in enumerate(arrays)]
    order = rng.permutation(len(paths))
    shuffled = [paths[i] for i in order]
    parallel = decode_images(shuffled, num_workers=4)
    serial = decode_images(shuffled, num_workers=1)
    assert parallel.shape == (130, 1, 6, 5) and parallel.dtype == torch.uint8
    assert torch.equal(parallel, serial)
    assert torch.equal(parallel[:, 0], torch.from_numpy(arrays[order]))


def test_decode_error_names_first_bad_file_in_parallel(tmp_path: Path) -> None:
    paths = [_save(tmp_path / f"{i:03d}.png", np.full((3, 3), i, np.uint8)) for i in range(100)]
    _corrupt(paths[70])
    _corrupt(paths[90])
    with pytest.raises(ImageDecodeError, match=r"070\.png") as info:
        decode_images(paths, num_workers=4)
    assert isinstance(info.value, ValueError) and info.value.__cause__ is not None


def test_decode_channels_inferred_and_forced(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    g, c = _save(tmp_path / "g.png", grey), _save(tmp_path / "c.png", rgb)
    assert decode_images([g, g]).shape == (2, 1, 5, 7)
    mixed = decode_images([g, c])  # greyscale first, then widened to RGB
    assert mixed.shape == (2, 3, 5, 7)
    assert torch.equal(mixed[0], torch.from_numpy(grey).expand(3, 5, 7))
    assert torch.equal(mixed[1], torch.from_numpy(rgb).permute(2, 0, 1))
    forced = decode_images([c], channels=1)
    expected = np.array(Image.fromarray(rgb).convert("L"))
    assert torch.equal(forced[0, 0], torch.from_numpy(expected))


def test_decode_16bit_scaled_and_grey_palette(tmp_path: Path) -> None:
    wide = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    p16 = _save(tmp_path / "wide.png", wide)
    assert Image.open(p16).mode.startswith("I")
    out = decode_images([p16])
    assert torch.equal(out[0, 0], torch.from_numpy(np.rint(wide / 257.0).astype(np.uint8)))
    palette = Image.fromarray(np.array([[0, 128], [255, 64]], np.uint8)).convert("P")
    palette.save(tmp_path / "pal.gif")
    assert Image.open(tmp_path / "pal.gif").mode == "P"
    assert decode_images([tmp_path / "pal.gif"]).tolist() == [[[[0, 128], [255, 64]]]]


def test_decode_size_mismatch_error_names_file_and_fix(tmp_path: Path) -> None:
    a = _save(tmp_path / "a.png", np.zeros((10, 12), np.uint8))
    b = _save(tmp_path / "b.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DatasetFormatError, match=r"b\.png is 8x8.*a\.png is 12x10.*image_size"):
        decode_images([a, b])
    assert decode_images([a, b], image_size=4).shape == (2, 1, 4, 4)


def test_decode_resize_matches_resize_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    paths = [
        _save(tmp_path / f"{i}.png", rng.integers(0, 256, (105, 105, 3), dtype=np.uint8))
        for i in range(3)
    ]
    full = decode_images(paths)
    for size in (35, 28):  # integer factor (BOX) and not (antialiased bilinear)
        diff = decode_images(paths, image_size=size).int() - resize_images(full, size).int()
        assert diff.abs().max() <= 1


def test_decode_missing_file_and_empty_list(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match=r"nope\.png.*FileNotFoundError"):
        decode_images([tmp_path / "nope.png"])
    with pytest.raises(ValueError, match="no image files"):
        decode_images([])


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A small valid PNG whose header (CRC fixed) claims ``width x height`` pixels."""
    _save(path, np.zeros((4, 4), np.uint8))
    data = path.read_bytes()
    ihdr = bytearray(data[12:29])
    struct.pack_into(">II", ihdr, 4, width, height)
    path.write_bytes(data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:])
    return path


def test_decompression_bomb_refused_from_header(tmp_path: Path) -> None:
    """Over PIL's MAX_IMAGE_PIXELS: refused before decoding, no DecompressionBombWarning leaks.

    Between 1x and 2x the bound PIL only warns, and decoding went on (a JPEG claiming
    10000x10000 decoded to 300 MB of RGB); above 2x it raises. Both are one ImageDecodeError
    now, whatever the warning filters.
    """
    assert Image.MAX_IMAGE_PIXELS < 10_000**2 < 2 * Image.MAX_IMAGE_PIXELS
    for side in (10_000, 100_000):
        bomb = _png_claiming(tmp_path / f"bomb{side}.png", side, side)
        for action in ("always", "error"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter(action)
                with pytest.raises(ImageDecodeError) as info:
                    decode_images([bomb])
            assert caught == []
            assert str(info.value) == (
                f"cannot decode image {bomb}: DecompressionBombError: Image size "
                f"({side**2} pixels) exceeds limit of "
                f"{Image.MAX_IMAGE_PIXELS * (1 if side == 10_000 else 2)} pixels, could be "
                "decompression bomb DOS attack."
            )
        with pytest.raises(ImageDecodeError, match=rf"{bomb.name}: DecompressionBombError"):
            colour_images([bomb])


# --------------------------------------------------------------------------- image folder


def _image_folder(root: Path) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(3)
    classes = {"zebra": 2, "ant": 3, "moth": 1}
    data: dict[str, list[np.ndarray]] = {}
    for name, count in classes.items():
        data[name] = [rng.integers(0, 256, (6, 8), dtype=np.uint8) for _ in range(count)]
        for i, array in reversed(list(enumerate(data[name]))):
            _save(root / name / f"img_{i:02d}.png", array)
        (root / name / "Thumbs.db").write_bytes(b"junk")
        _save(root / name / ".hidden.png", np.zeros((2, 2), np.uint8))
    (root / ".cache").mkdir()
    return data


def test_image_folder_values_order_and_labels(tmp_path: Path) -> None:
    data = _image_folder(tmp_path / "root")
    ds = load_image_folder(tmp_path / "root")
    assert ds.class_names == ("ant", "moth", "zebra") and ds.name == "root"
    assert ds.images.shape == (6, 1, 6, 8) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [0, 0, 0, 1, 2, 2]
    expected = np.stack([a for name in ds.class_names for a in data[name]])
    assert torch.equal(ds.images[:, 0], torch.from_numpy(expected))
    again = load_image_folder(tmp_path / "root", name="again")
    assert torch.equal(again.images, ds.images) and again.name == "again"


def test_image_folder_resize_and_channels(tmp_path: Path) -> None:
    _image_folder(tmp_path)
    ds = load_image_folder(tmp_path, image_size=4, channels=3)
    assert ds.images.shape == (6, 3, 4, 4)
    assert torch.equal(ds.images[:, 0], ds.images[:, 2])


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing.*does not exist"):
        load_image_folder(tmp_path / "missing")
    _save(tmp_path / "flat" / "a.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DatasetFormatError, match=r"no class subdirectories.*1 images directly"):
        load_image_folder(tmp_path / "flat")
    _image_folder(tmp_path / "ds")
    (tmp_path / "ds" / "empty_class").mkdir()
    with pytest.raises(DatasetFormatError, match=r"empty_class holds no images"):
        load_image_folder(tmp_path / "ds")
    (tmp_path / "ds" / "empty_class").rmdir()
    bad = _corrupt(tmp_path / "ds" / "moth" / "img_05.png")
    with pytest.raises(ImageDecodeError, match=str(bad).replace(".", r"\.")):
        load_image_folder(tmp_path / "ds")


def test_colour_images_names_what_makes_a_split_colour(tmp_path: Path) -> None:
    """One colour image makes a split 3-channel; colour_images names it, by decoding's rule."""
    rng = np.random.default_rng(7)
    grey = rng.integers(0, 256, (6, 6), dtype=np.uint8)
    root = tmp_path / "test"
    _save(root / "ant" / "a.png", grey)
    _save(root / "ant" / "b.jpg", grey)
    _save(root / "ant" / "c.png", (grey.astype(np.uint16) * 257))  # 16-bit grey
    grey_palette = Image.fromarray(grey).convert("P")
    grey_palette.save(root / "ant" / "d.gif")
    photo = _save(root / "bee" / "photo.jpg", rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    _save(root / "bee" / "x.png", grey)
    colour_palette = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).quantize(8)
    colour_palette.save(root / "bee" / "y.gif")
    flat = _save(root / "bee" / "z.png", np.stack([grey] * 3, axis=-1))  # RGB, grey content
    assert colour_images(root) == [photo, root / "bee" / "y.gif", flat]
    assert colour_images(root, limit=1) == [photo]
    assert colour_images(sorted(root.rglob("*.*"))[:4]) == []  # the ant images: all grey
    assert load_image_folder(root).image_shape[0] == 3
    for path in sorted(root.rglob("*.*")):  # the same rule as decoding
        assert is_colour_image(path) == (decode_images([path]).shape[1] == 3)
    for path in (photo, root / "bee" / "y.gif", flat):
        path.unlink()
    assert colour_images(root) == [] and load_image_folder(root).image_shape[0] == 1
    _corrupt(root / "bee" / "broken.png")
    with pytest.raises(ImageDecodeError, match=r"broken\.png"):
        colour_images(root)
    with pytest.raises(FileNotFoundError, match="image folder"):
        colour_images(tmp_path / "missing")


def test_missing_data_names_the_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each reader's FileNotFoundError is one line naming the absolute path and the one given."""
    monkeypatch.chdir(tmp_path)
    readers = {
        "data/glyphs": lambda: load_glyphs("data/glyphs", "train"),
        "data/folder/train": lambda: load_image_folder("data/folder/train"),
        "data/omniglot": lambda: load_omniglot("data/omniglot"),
        "data/mini": lambda: load_mini_imagenet("data/mini", "train"),
        "data/fashion": lambda: load_fashion_mnist("data/fashion"),
    }
    for given, read in readers.items():
        with pytest.raises(FileNotFoundError) as info:
            read()
        message = str(info.value)
        assert "\n" not in message
        assert f"{tmp_path / given} (given as {given!r})" in message, message
    (tmp_path / "data" / "glyphs").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="that directory holds no manifest.json"):
        load_glyphs("data/glyphs", "train")
    (tmp_path / "data" / "omniglot").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path}/data/omniglot/images_b")):
        load_omniglot("data/omniglot")
    with pytest.raises(FileNotFoundError, match=r"^image folder /\S+/absent does not exist;"):
        load_image_folder(tmp_path / "absent")  # absolute as given: named once


# --------------------------------------------------------------------------- Omniglot

_BACKGROUND = {"Alphabet_of_the_Magi": 2, "Latin": 3}
_EVALUATION = {"Angelic": 2}
_DRAWERS = 3


def _omniglot(root: Path) -> dict[str, np.ndarray]:
    """Official layout: 105x105 1-bit PNGs named <character id>_<drawer>.png."""
    rng = np.random.default_rng(4)
    bits: dict[str, np.ndarray] = {}
    char_id = 1
    for part, alphabets in (("background", _BACKGROUND), ("evaluation", _EVALUATION)):
        for alphabet, n_chars in alphabets.items():
            for c in range(1, n_chars + 1):
                name = f"{alphabet}/character{c:02d}"
                bits[name] = rng.random((_DRAWERS, 105, 105)) < 0.8
                for d in range(_DRAWERS):
                    path = root / f"images_{part}" / name / f"{char_id:04d}_{d + 1:02d}.png"
                    _save(path, bits[name][d])
                char_id += 1
    assert Image.open(path).mode == "1"
    return bits


def test_omniglot_background_values_and_labels(tmp_path: Path) -> None:
    bits = _omniglot(tmp_path)
    ds = load_omniglot(tmp_path)
    assert ds.name == "omniglot/background"
    assert ds.class_names == (
        "Alphabet_of_the_Magi/character01",
        "Alphabet_of_the_Magi/character02",
        "Latin/character01",
        "Latin/character02",
        "Latin/character03",
    )
    assert ds.images.shape == (15, 1, 105, 105) and ds.images.dtype == torch.uint8
    assert ds.class_counts().tolist() == [_DRAWERS] * 5
    for label, name in enumerate(ds.class_names):
        expected = torch.from_numpy(bits[name].astype(np.uint8) * 255)
        assert torch.equal(ds.images[ds.labels == label, 0], expected)


def test_omniglot_evaluation_all_and_resize(tmp_path: Path) -> None:
    _omniglot(tmp_path)
    evaluation = load_omniglot(tmp_path, "evaluation")
    assert evaluation.class_names == ("Angelic/character01", "Angelic/character02")
    everything = load_omniglot(tmp_path, "all")
    background = load_omniglot(tmp_path, "background")
    assert everything.class_names == background.class_names + evaluation.class_names
    assert torch.equal(everything.images, torch.cat([background.images, evaluation.images]))
    assert everything.labels.tolist() == sorted(everything.labels.tolist())
    small = load_omniglot(tmp_path, "evaluation", image_size=28)
    assert small.images.shape == (6, 1, 28, 28)
    assert (small.images.int() - resize_images(evaluation.images, 28).int()).abs().max() <= 1


def test_omniglot_errors(tmp_path: Path) -> None:
    _omniglot(tmp_path)
    for path in (tmp_path / "images_evaluation").rglob("*.png"):
        path.unlink()
    with pytest.raises(DatasetFormatError, match=r"Angelic.character01 holds no PNGs"):
        load_omniglot(tmp_path, "evaluation")
    only_background = tmp_path / "only_background"
    only_background.mkdir()
    (only_background / "images_background").symlink_to(tmp_path / "images_background")
    assert load_omniglot(only_background).num_classes == 5
    with pytest.raises(FileNotFoundError, match=r"images_evaluation.*unzip images_evaluation\.zip"):
        load_omniglot(only_background, "all")
    _corrupt(tmp_path / "images_background" / "Latin" / "character02" / "0004_02.png")
    with pytest.raises(ImageDecodeError, match=r"Latin.character02.0004_02\.png"):
        load_omniglot(tmp_path)
    with pytest.raises(ValueError, match="subset must be one of"):
        load_omniglot(tmp_path, "train")  # type: ignore[arg-type]
    nested = tmp_path / "nested" / "images_background"
    (nested / "images_background" / "Latin" / "character01").mkdir(parents=True)
    with pytest.raises(DatasetFormatError, match="one level too deep"):
        load_omniglot(tmp_path / "nested")


# --------------------------------------------------------------------------- miniImageNet

_SPLITS = {
    "train": ["n01532829", "n01558993", "n01704323"],
    "val": ["n01855672", "n02091244"],
    "test": ["n01930112", "n01981276"],
}
_PER_CLASS = 3


def _colour(wnid: str) -> np.ndarray:
    return np.random.default_rng(int(wnid[1:])).integers(20, 236, 3).astype(np.uint8)


def _mini_imagenet(root: Path, sizes: tuple[tuple[int, int], ...] = ((84, 84),)) -> None:
    """Ravi & Larochelle layout: split CSVs (rows shuffled here) and one flat images/ folder."""
    rng = np.random.default_rng(5)
    for split, wnids in _SPLITS.items():
        rows = []
        for wnid in wnids:
            for k in range(_PER_CLASS):
                filename = f"{wnid}{k + 1:08d}.jpg"
                h, w = sizes[k % len(sizes)]
                _save(root / "images" / filename, np.broadcast_to(_colour(wnid), (h, w, 3)))
                rows.append([filename, wnid])
        rows = [rows[i] for i in rng.permutation(len(rows))]
        with (root / f"{split}.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows([["filename", "label"], *rows])


def _csv_rows(root: Path, split: str) -> list[list[str]]:
    with (root / f"{split}.csv").open(newline="") as handle:
        return list(csv.reader(handle))[1:]


def test_mini_imagenet_labels_follow_sorted_wnids_and_csv_order(tmp_path: Path) -> None:
    _mini_imagenet(tmp_path, sizes=((90, 100), (84, 84), (120, 96)))
    ds = load_mini_imagenet(tmp_path, "train")
    assert ds.name == "mini-imagenet/train" and ds.class_names == tuple(_SPLITS["train"])
    assert ds.images.shape == (9, 3, 84, 84) and ds.images.dtype == torch.uint8
    assert ds.class_counts().tolist() == [_PER_CLASS] * 3
    rows = _csv_rows(tmp_path, "train")
    assert [ds.class_names[k] for k in ds.labels.tolist()] == [wnid for _, wnid in rows]
    for image, (_, wnid) in zip(ds.images, rows, strict=True):  # JPEG: close, not exact
        mean = image.float().mean(dim=(1, 2))
        assert (mean - torch.from_numpy(_colour(wnid)).float()).abs().max() <= 4
    for split in ("val", "test"):
        other = load_mini_imagenet(tmp_path, split, image_size=32)
        assert other.class_names == tuple(_SPLITS[split]) and other.images.shape[1:] == (3, 32, 32)


def test_mini_imagenet_native_size_and_greyscale_jpeg(tmp_path: Path) -> None:
    _mini_imagenet(tmp_path)
    _save(tmp_path / "images" / "n0185567200000001.jpg", np.full((84, 84), 100, np.uint8))
    ds = load_mini_imagenet(tmp_path, "val", image_size=None)
    assert ds.images.shape == (6, 3, 84, 84)
    row = [r[0] for r in _csv_rows(tmp_path, "val")].index("n0185567200000001.jpg")
    assert (ds.images[row].int() - 100).abs().max() <= 1


def test_mini_imagenet_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train\.csv not found"):
        load_mini_imagenet(tmp_path, "train")
    _mini_imagenet(tmp_path, sizes=((84, 84), (90, 90)))
    with pytest.raises(DatasetFormatError, match=r"is 90x90.*image_size"):
        load_mini_imagenet(tmp_path, "test", image_size=None)
    for name in ("n0155899300000002.jpg", "n0170432300000003.jpg"):
        (tmp_path / "images" / name).unlink()
    with pytest.raises(FileNotFoundError, match=r"2 of 9 images listed in .*train\.csv"):
        load_mini_imagenet(tmp_path, "train")
    bad = _corrupt(tmp_path / "images" / "n0193011200000002.jpg")
    with pytest.raises(ImageDecodeError, match=bad.name):
        load_mini_imagenet(tmp_path, "test")
    (tmp_path / "val.csv").write_text("image,class\nn0185567200000001.jpg,n01855672\n")
    with pytest.raises(DatasetFormatError, match=r"header is 'image,class'"):
        load_mini_imagenet(tmp_path, "val")
    (tmp_path / "val.csv").write_text("filename,label\nn0185567200000001.jpg\n")
    with pytest.raises(DatasetFormatError, match=r"line 2"):
        load_mini_imagenet(tmp_path, "val")
    with pytest.raises(ValueError, match="split must be one of"):
        load_mini_imagenet(tmp_path, "validation")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Fashion-MNIST


def _idx(path: Path, magic: int, array: np.ndarray) -> None:
    payload = struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def _fashion(
    root: Path, n: int, prefix: str = "train", suffix: str = ".gz"
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    _idx(root / f"{prefix}-images-idx3-ubyte{suffix}", 2051, images)
    _idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", 2049, labels)
    return images, labels


def test_fashion_mnist_roundtrip_gz_and_plain(tmp_path: Path) -> None:
    images, labels = _fashion(tmp_path, 50)
    test_images, test_labels = _fashion(tmp_path, 20, prefix="t10k", suffix="")
    train = load_fashion_mnist(tmp_path)
    assert train.name == "fashion-mnist/train" and train.class_names == FASHION_MNIST_CLASSES
    assert train.images.shape == (50, 1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], torch.from_numpy(images))
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == labels.tolist()
    test = load_fashion_mnist(tmp_path, "test")
    assert torch.equal(test.images[:, 0], torch.from_numpy(test_images))
    assert test.labels.tolist() == test_labels.tolist()
    assert FASHION_MNIST_CLASSES[0] == "T-shirt/top" and FASHION_MNIST_CLASSES[9] == "Ankle boot"


def test_fashion_mnist_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.*apt-get install"):
        load_fashion_mnist(tmp_path)
    images, labels = _fashion(tmp_path, 10)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    _idx(bad, 2049, images)
    with pytest.raises(DatasetFormatError, match=r"train-images-idx3-ubyte\.gz.*magic.*2049"):
        load_fashion_mnist(tmp_path)
    bad.write_bytes(gzip.compress(struct.pack(">4i", 2051, 10, 28, 28) + images.tobytes()[:-5]))
    with pytest.raises(DatasetFormatError, match=r"dimensions \(10, 28, 28\)"):
        load_fashion_mnist(tmp_path)
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetFormatError, match=r"cannot read IDX file .*images-idx3"):
        load_fashion_mnist(tmp_path)
    _idx(bad, 2051, images)
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", 2049, labels[:7])
    with pytest.raises(DatasetFormatError, match="10 images but .* 7 labels"):
        load_fashion_mnist(tmp_path)
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", 2049, np.full(10, 12, np.uint8))
    with pytest.raises(DatasetFormatError, match="label 12 is out of range"):
        load_fashion_mnist(tmp_path)
    assert read_idx(bad, 2051).shape == (10, 28, 28)


_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (_DEBIAN / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_debian_package() -> None:
    train = load_fashion_mnist()
    test = load_fashion_mnist(split="test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.class_counts().tolist() == [6000] * 10
    assert test.class_counts().tolist() == [1000] * 10


def test_fashion_mnist_is_a_dataset_of_the_run_config(tmp_path: Path) -> None:
    from metatl.config import ConfigError, load_config
    from metatl.training.data import load_split

    images, _ = _fashion(tmp_path, 30, prefix="t10k")
    config = load_config(None, ["data.dataset=fashion_mnist", f"data.root={tmp_path}"])
    test = load_split(config.data, "test")
    assert test.name == "fashion-mnist/test" and test.images.shape == (30, 1, 28, 28)
    assert np.array_equal(test.images[:, 0].numpy(), images)
    resized = load_config(
        None, ["data.dataset=fashion_mnist", f"data.root={tmp_path}", "data.image_size=14"]
    )
    assert load_split(resized.data, "test").images.shape == (30, 1, 14, 14)
    with pytest.raises(ConfigError, match="has the splits train, test, not 'val'"):
        load_split(config.data, "val")


def test_debian_fashion_mnist_is_read_whole() -> None:
    """The real files of Debian's dataset-fashion-mnist (make test installs it)."""
    if not (Path(FASHION_MNIST_ROOT) / "t10k-labels-idx1-ubyte.gz").is_file():
        if os.environ.get("METATL_REQUIRE_FASHION_MNIST") == "1":
            pytest.fail("Debian's dataset-fashion-mnist is not installed (make test installs it)")
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    test = load_fashion_mnist(split="test")
    assert test.images.shape == (10_000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert 50 < float(test.images.float().mean()) < 100  # dark background, bright garments
