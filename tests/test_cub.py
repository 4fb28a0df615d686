"""CUB-200-2011 reader, checked on a tiny copy laid out exactly as ``CUB_200_2011.tgz`` extracts."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from episodes.datasets._decode import DatasetFormatError
from episodes.datasets.cub import CUB_SPLITS, cub_class_split, load_cub

FOLDERS = (
    "001.Black_footed_Albatross",
    "002.Laysan_Albatross",
    "003.Sooty_Albatross",
    "004.Groove_billed_Ani",
    "005.Crested_Auklet",
    "006.Least_Auklet",
    "007.Parakeet_Auklet",
    "008.Rhinoceros_Auklet",
)
PER_CLASS = 3
SIZE = 16
TOLERANCE = 8  # grey levels; JPEG is lossy even on solid colours
COLOURS = np.random.default_rng(0).integers(20, 236, (len(FOLDERS), PER_CLASS, 3))
GREY = (0, 1)  # (class, image) saved as a mode "L" JPEG
GREY_VALUE = 100
BOXED = (2, 0)  # (class, image) holding a coloured box on another background
BOX = (16.0, 8.0, 32.0, 32.0)  # x, y, width, height: 8-pixel aligned, inside 64x48
BOX_COLOUR = (220, 30, 60)
BACKGROUND = (20, 200, 40)
# The Chen et al. rule over the 8 folders: i % 2 == 0 train, i % 4 == 1 val, i % 4 == 3 test.
EXPECTED = {"train": (0, 2, 4, 6), "val": (1, 5), "test": (3, 7)}


def _image(c: int, j: int) -> Image.Image:
    """The image ``j`` of class ``c``: solid colour, a size that varies, one greyscale."""
    if (c, j) == GREY:
        return Image.new("L", (40, 30), GREY_VALUE)
    if (c, j) == BOXED:
        array = np.empty((48, 64, 3), np.uint8)
        array[:] = BACKGROUND
        x, y, w, h = (int(v) for v in BOX)
        array[y : y + h, x : x + w] = BOX_COLOUR
        return Image.fromarray(array)
    size = (40 + 8 * j, 32 + 8 * (c % 2))
    return Image.new("RGB", size, tuple(int(v) for v in COLOURS[c, j]))


def _make_cub(base: Path, folders: tuple[str, ...] = FOLDERS) -> Path:
    """A ``CUB_200_2011`` folder under ``base`` with every metadata file in its real format."""
    root = base / "CUB_200_2011"
    lines: dict[str, list[str]] = {
        name: []
        for name in (
            "classes",
            "images",
            "image_class_labels",
            "bounding_boxes",
            "train_test_split",
        )
    }
    image_id = 0
    for c, folder in enumerate(folders):
        lines["classes"].append(f"{c + 1} {folder}")
        name = folder.split(".", 1)[1]
        for j in range(PER_CLASS):
            image_id += 1
            relative = f"{folder}/{name}_{j + 1:04d}_{image_id + 100:05d}.jpg"
            image = _image(c, j)
            (root / "images" / folder).mkdir(parents=True, exist_ok=True)
            image.save(root / "images" / relative, quality=95, subsampling=0)
            x, y, w, h = BOX if (c, j) == BOXED else (0.0, 0.0, *image.size)
            lines["images"].append(f"{image_id} {relative}")
            lines["image_class_labels"].append(f"{image_id} {c + 1}")
            lines["bounding_boxes"].append(f"{image_id} {x:.1f} {y:.1f} {w:.1f} {h:.1f}")
            lines["train_test_split"].append(f"{image_id} {j % 2}")
    for name, content in lines.items():
        (root / f"{name}.txt").write_text("\n".join(content) + "\n")
    # A class folder that classes.txt does not name: must be ignored.
    (root / "images" / "999.Extra_bird").mkdir()
    Image.new("RGB", (8, 8), (0, 0, 0)).save(root / "images" / "999.Extra_bird" / "x.jpg")
    return root


@pytest.fixture
def cub(tmp_path: Path) -> Path:
    return _make_cub(tmp_path)


def _max_error(image: torch.Tensor, colour: tuple[int, ...] | np.ndarray) -> int:
    """Largest per-pixel deviation of ``image`` ``[3, H, W]`` from a solid ``colour``."""
    expected = torch.tensor([int(v) for v in colour]).view(3, 1, 1)
    return int((image.int() - expected).abs().max())


# --------------------------------------------------------------------------- class split


def test_cub_class_split_chen_rule_on_200_classes() -> None:
    folders = [f"{i:03d}.Bird_number_{i}" for i in range(1, 201)]
    shuffled = random.Random(0).sample(folders, len(folders))
    split = cub_class_split(shuffled)
    assert {name: len(split[name]) for name in CUB_SPLITS} == {"train": 100, "val": 50, "test": 50}
    assert sorted(split["train"] + split["val"] + split["test"]) == folders
    # 0-based index 0 -> train, 1 -> val, 2 -> train, 3 -> test.
    assert split["train"][:2] == [folders[0], folders[2]]
    assert split["val"][:2] == [folders[1], folders[5]]
    assert split["test"][:2] == [folders[3], folders[7]]
    assert split["val"][-1] == folders[197] and split["test"][-1] == folders[199]
    assert all(split[name] == sorted(split[name]) for name in CUB_SPLITS)


def test_cub_class_split_rejects_repeated_folder() -> None:
    with pytest.raises(ValueError, match=r"repeated: '002\.B'"):
        cub_class_split(["001.A", "002.B", "002.B", "003.C"])


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("split", CUB_SPLITS)
def test_load_cub_default_rule_classes_labels_colours(cub: Path, split: str) -> None:
    ds = load_cub(cub, split, image_size=SIZE, workers=1)
    classes = EXPECTED[split]
    assert ds.name == f"cub/{split}"
    assert ds.class_names == tuple(FOLDERS[c].split(".", 1)[1] for c in classes)
    assert ds.images.shape == (len(classes) * PER_CLASS, 3, SIZE, SIZE)
    assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
    assert ds.labels.tolist() == [k for k in range(len(classes)) for _ in range(PER_CLASS)]
    for i, (c, j) in enumerate((c, j) for c in classes for j in range(PER_CLASS)):
        if (c, j) not in (GREY, BOXED):
            assert _max_error(ds.images[i], COLOURS[c, j]) <= TOLERANCE, (c, j)


def test_load_cub_greyscale_jpeg_comes_back_rgb(cub: Path, tmp_path: Path) -> None:
    ds = load_cub(cub, "train", image_size=SIZE, workers=1)
    grey = ds.images[GREY[1]]  # class 0 is the first train class
    assert grey.shape == (3, SIZE, SIZE)
    assert _max_error(grey, (GREY_VALUE,) * 3) <= TOLERANCE
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[0], grey[2])
    # A split whose images are all greyscale is still 3-channel.
    for path in (cub / "images" / FOLDERS[0]).iterdir():
        Image.open(path).convert("L").save(path, quality=95)
    split_file = tmp_path / "grey.txt"
    split_file.write_text(f"{FOLDERS[0]}\n")
    only_grey = load_cub(cub, "train", image_size=SIZE, split_file=split_file, workers=1)
    assert only_grey.images.shape == (PER_CLASS, 3, SIZE, SIZE)
    assert torch.equal(only_grey.images[:, 0], only_grey.images[:, 2])


def test_load_cub_root_may_be_parent_folder(cub: Path) -> None:
    direct = load_cub(cub, "val", image_size=SIZE, workers=1)
    parent = load_cub(cub.parent, "val", image_size=SIZE, workers=1)
    assert torch.equal(direct.images, parent.images)
    assert torch.equal(direct.labels, parent.labels)
    assert direct.class_names == parent.class_names


def test_load_cub_orders_by_class_then_images_txt(cub: Path) -> None:
    before = load_cub(cub, "test", image_size=SIZE, workers=1)
    images_txt = cub / "images.txt"
    images_txt.write_text("\n".join(reversed(images_txt.read_text().splitlines())) + "\n")
    after = load_cub(cub, "test", image_size=SIZE, workers=1)
    assert torch.equal(after.labels, before.labels)
    for k in range(len(EXPECTED["test"])):
        block = slice(k * PER_CLASS, (k + 1) * PER_CLASS)
        assert torch.equal(after.images[block], before.images[block].flip(0))


def test_load_cub_split_file_overrides_rule(cub: Path, tmp_path: Path) -> None:
    split_file = tmp_path / "my_split.txt"
    split_file.write_text(
        "# a published split\n\n008.Rhinoceros_Auklet\n  Laysan_Albatross  # bare name\n"
    )
    ds = load_cub(cub, "test", image_size=SIZE, split_file=split_file, workers=1)
    assert ds.name == "cub/test"
    assert ds.class_names == ("Laysan_Albatross", "Rhinoceros_Auklet")
    assert ds.labels.tolist() == [0] * PER_CLASS + [1] * PER_CLASS
    assert _max_error(ds.images[PER_CLASS], COLOURS[7, 0]) <= TOLERANCE


def test_load_cub_split_file_unknown_names_listed(cub: Path, tmp_path: Path) -> None:
    split_file = tmp_path / "split.txt"
    split_file.write_text("001.Black_footed_Albatross\n201.Dodo\nKiwi\n")
    with pytest.raises(DatasetFormatError) as info:
        load_cub(cub, "train", split_file=split_file)
    message = str(info.value)
    assert "\n" not in message and str(split_file) in message and "classes.txt" in message
    assert "'201.Dodo' (line 2)" in message and "'Kiwi' (line 3)" in message
    assert "Black_footed" not in message.split("not in")[1].split(";")[0]


def test_load_cub_missing_listed_image_named(cub: Path) -> None:
    lost = sorted((cub / "images" / FOLDERS[4]).iterdir())[1]
    lost.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(lost))) as info:
        load_cub(cub, "train", image_size=SIZE)
    assert "1 of the 12 images" in str(info.value)
    load_cub(cub, "val", image_size=SIZE, workers=1)  # other splits do not need it


@pytest.mark.parametrize(
    ("file", "line", "replacement", "expected"),
    [
        ("classes.txt", 3, "3 003.Sooty Albatross", r"line 3: expected '<class_id> <NNN"),
        ("classes.txt", 5, "five 005.Crested_Auklet", r"line 5: class_id 'five' is not an"),
        ("classes.txt", 2, "1 002.Laysan_Albatross", r"line 2: class_id 1 already given on line 1"),
        ("images.txt", 4, "4", r"line 4: expected '<image_id> <path>', got '4'"),
        ("images.txt", 6, "6 ../../secret.jpg", r"line 6: image path '../../secret.jpg' must be"),
        ("image_class_labels.txt", 7, "7 1.5", r"line 7: class_id '1.5' is not an integer"),
        ("image_class_labels.txt", 9, "9 201", r"line 9: class_id 201 is not in"),
        ("image_class_labels.txt", 2, "", r"no class to 1 images .* image_id 2 "),
    ],
)
def test_load_cub_malformed_metadata_line(
    cub: Path, file: str, line: int, replacement: str, expected: str
) -> None:
    path = cub / file
    lines = path.read_text().splitlines()
    lines[line - 1] = replacement
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError, match=re.escape(str(path)) + ".*" + expected) as info:
        load_cub(cub, "train", image_size=SIZE)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("replacement", "expected"),
    [
        ("7 16.0 8.0 32.0", r"line 7: expected '<image_id> <x> <y> <width> <height>'"),
        ("7 16.0 8.0 nan 32.0", r"line 7: box coordinate 'nan' is not a finite number"),
        ("7 16.0 8.0 0.0 32.0", r"line 7: box width and height must be > 0"),
        ("7 70.0 8.0 4.0 4.0", r"line 7: box x=70 .* lies outside .*\(64x48\)"),
    ],
)
def test_load_cub_malformed_box(cub: Path, replacement: str, expected: str) -> None:
    path = cub / "bounding_boxes.txt"
    lines = path.read_text().splitlines()
    assert lines[6].startswith("7 16.0 8.0")  # the boxed image, class 2 (train)
    lines[6] = replacement
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError, match=re.escape(str(path)) + ".*" + expected):
        load_cub(cub, "train", image_size=SIZE, crop_to_box=True, workers=1)
    load_cub(cub, "train", image_size=SIZE, workers=1)  # boxes are read only to crop


def test_load_cub_crop_to_box(cub: Path) -> None:
    boxed = EXPECTED["train"].index(BOXED[0]) * PER_CLASS + BOXED[1]
    whole = load_cub(cub, "train", image_size=SIZE, workers=1)
    cropped = load_cub(cub, "train", image_size=SIZE, workers=1, crop_to_box=True)
    assert cropped.images.shape == whole.images.shape
    assert _max_error(cropped.images[boxed], BOX_COLOUR) <= TOLERANCE
    assert _max_error(whole.images[boxed], BOX_COLOUR) > 100  # the background shows
    assert _max_error(whole.images[boxed][:, :1, :1], BACKGROUND) <= TOLERANCE
    # The other boxes cover their whole image: cropping changes nothing beyond resampling.
    others = torch.arange(len(whole)) != boxed
    difference = (cropped.images[others].int() - whole.images[others].int()).abs()
    assert int(difference.max()) <= 1
    parallel = load_cub(cub, "train", image_size=SIZE, workers=2, crop_to_box=True)
    assert torch.equal(parallel.images, cropped.images)


def test_load_cub_errors(cub: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        load_cub(cub, "novel")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist.*CUB_200_2011"):
        load_cub(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"holds neither images\.txt"):
        load_cub(cub / "images")
    with pytest.raises(FileNotFoundError, match=r"split file .*absent\.txt not found"):
        load_cub(cub, split_file=tmp_path / "absent.txt")
    (cub / "image_class_labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"image_class_labels\.txt not found"):
        load_cub(cub)


def test_load_cub_needs_classes_in_every_split(tmp_path: Path) -> None:
    root = _make_cub(tmp_path, FOLDERS[:3])
    assert load_cub(root, "val", image_size=SIZE).num_classes == 1
    with pytest.raises(DatasetFormatError, match=r"split 'test' of CUB-200-2011 has no classes"):
        load_cub(root, "test", image_size=SIZE)
