"""The digits domain-shift benchmark (episodes.digits) and its reader.

Built from three small faces (fonts-misaki, fonts-motoya-l-maruberi, which `make test` installs,
and fonts-dejavu-core) into a temporary folder; the target is scikit-learn's bundled digits.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from episodes import UnlabelledImages, load_domain_shift
from episodes.datasets import (
    DIGITS_SPLITS,
    UnknownSplitError,
    list_datasets,
    load_dataset,
    load_digits_benchmark,
)
from episodes.datasets.digits import load_digit_fonts
from episodes.digits import (
    DIGITS,
    build_digits_benchmark,
    load_sklearn_digits,
    main,
    render_digits,
    small_digit_fonts,
    split_families,
)
from episodes.glyphs import BuildExistsError, FontSpec

sklearn_datasets = pytest.importorskip("sklearn.datasets")

COPIES = 2


def require(specs: tuple[FontSpec, ...]) -> tuple[FontSpec, ...]:
    missing = sorted({f.package for f in specs if not f.path.is_file()})
    if missing:
        message = f"test fonts not installed: apt-get install {' '.join(missing)}"
        if os.environ.get("METATL_REQUIRE_TEST_FONTS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return specs


@pytest.fixture(scope="module")
def fonts() -> tuple[FontSpec, ...]:
    return require(small_digit_fonts())


def build(out: Path, fonts: tuple[FontSpec, ...], **kw: object) -> dict:
    options = {"copies": COPIES, "min_recognised": 0, "workers": 1, "val_fraction": 0.3} | kw
    return build_digits_benchmark(out, fonts, **options)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, fonts: tuple[FontSpec, ...]) -> Path:
    out = tmp_path_factory.mktemp("digits") / "bench"
    build(out, fonts)
    return out


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def ink_box(image: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(image < 128)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def test_render_centres_scales_and_augments(fonts: tuple[FontSpec, ...]) -> None:
    sans = fonts[2]
    clean, augmented = render_digits(sans, copies=4, seed=0)
    assert clean.shape == (10, 28, 28) and augmented.shape == (10, 4, 28, 28)
    assert clean.dtype == np.uint8 and (clean[:, 0, 0] == 255).all()  # dark ink on white
    for image in clean:
        x0, y0, x1, y1 = ink_box(image)
        assert max(x1 - x0, y1 - y0) in (23, 24, 25)  # 28 - 2 * margin 2
        assert abs((x0 + x1) / 2 - 14) <= 1 and abs((y0 + y1) / 2 - 14) <= 1
    # each copy is a light variation: never the clean image, always closer to its own digit
    differences = np.abs(augmented.astype(int) - clean[:, None].astype(int)).mean(axis=(2, 3))
    assert (differences > 0).all()
    to_own = differences.mean()
    to_other = np.abs(augmented.astype(int) - np.roll(clean, 1, 0)[:, None]).mean()
    assert to_own < 0.6 * to_other
    again = render_digits(sans, copies=4, seed=0)
    np.testing.assert_array_equal(again[1], augmented)
    assert not np.array_equal(render_digits(sans, copies=4, seed=1)[1], augmented)


def test_split_families() -> None:
    families = [f"family{i}" for i in range(10)] * 2
    val = split_families(families, 0.2, seed=0)
    assert len(val) == 2 and val <= set(families)
    assert split_families(families, 0.2, seed=0) == val
    assert split_families(["a", "b"], 0.01, seed=0) in ({"a"}, {"b"})
    with pytest.raises(ValueError, match="at least two font families"):
        split_families(["a", "a"], 0.5, seed=0)


def test_target_is_sklearn_digits_upsampled(fonts: tuple[FontSpec, ...]) -> None:
    target = load_sklearn_digits()
    raw = sklearn_datasets.load_digits()
    assert target.images.shape == (1797, 1, 28, 28) and target.class_names == tuple(DIGITS)
    assert target.labels.tolist() == raw.target.tolist()
    images = target.images[:, 0].numpy().astype(int)
    assert (images[:, :2] == 255).all() and (images[:, :, -2:] == 255).all()  # blank border
    # bilinear x3 (align_corners=False) samples block i exactly at pixel 3 i + 1 of the 24
    centres = images[:, 3:27:3, 3:27:3]
    np.testing.assert_array_equal(centres, 255 - np.round(raw.images * 255 / 16).astype(int))


def test_manifest(built: Path, fonts: tuple[FontSpec, ...]) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["format"] == "metatl-digits" and manifest["classes"] == list(DIGITS)
    assert [f["slug"] for f in manifest["fonts"]] == [f.slug for f in fonts]
    for entry, spec in zip(manifest["fonts"], fonts, strict=True):
        assert entry["package"] == spec.package and entry["file"] == str(spec.path)
        assert entry["sha256"] == hashlib.sha256(spec.path.read_bytes()).hexdigest()
    assert {f["family"] for f in manifest["fonts"]} == {
        "MisakiGothic",
        "MotoyaLMaru",
        "DejaVu Sans",
    }
    assert sorted(f["split"] for f in manifest["fonts"]) == [
        "source_train",
        "source_train",
        "source_val",
    ]
    assert manifest["splits"] == {
        "source_train": 2 * 10 * COPIES,
        "source_val": 10 * COPIES,
        "target_train": 899,
        "target_test": 898,
    }
    assert manifest["options"]["copies"] == COPIES and manifest["options"]["seed"] == 0
    assert manifest["augmentation"] == {
        "rotation": 10.0,
        "scale": [0.85, 1.05],
        "shift": 1.5,
        "stroke": [-1, 2],
    }
    assert manifest["target"]["loader"] == "sklearn.datasets.load_digits"
    assert len(manifest["target"]["sha256"]) == 64
    assert set(manifest["cache_sha256"]) == {
        f"cache/{s}-{k}.npy"
        for s in DIGITS_SPLITS
        for k in ("images", "labels", *(("fonts",) if s.startswith("source") else ()))
    }


def test_reader_and_registry(built: Path) -> None:
    assert "digits" in list_datasets()
    manifest = json.loads((built / "manifest.json").read_text())
    for split in DIGITS_SPLITS:
        data = load_dataset("digits", built, split)
        assert data.name == f"digits/{split}" and data.class_names == tuple(DIGITS)
        assert data.image_shape == (1, 28, 28) and len(data) == manifest["splits"][split]
        assert (data.images[:, 0, 0, 0] == 255).all()  # white corner: dark ink on white
    train = load_digits_benchmark(built, "source_train", verify=True)
    # font-major, then digit, then copy
    assert train.labels.tolist() == [d for _ in range(2) for d in range(10) for _ in range(COPIES)]
    fonts = load_digit_fonts(built, "source_train")
    train_fonts = [i for i, f in enumerate(manifest["fonts"]) if f["split"] == "source_train"]
    assert fonts.tolist() == [f for f in train_fonts for _ in range(10 * COPIES)]
    target_train = load_digits_benchmark(built, "target_train")
    target_test = load_digits_benchmark(built, "target_test")
    counts = target_train.class_counts() + target_test.class_counts()
    assert counts.tolist() == torch.bincount(torch.as_tensor(load_sklearn_digits().labels)).tolist()
    assert (target_train.class_counts() - target_test.class_counts()).abs().max() <= 1
    small = load_dataset("digits", built, "target_test", image_size=14)
    assert small.image_shape == (1, 14, 14)
    with pytest.raises(UnknownSplitError, match="digits has the splits source_train"):
        load_dataset("digits", built, "train")
    with pytest.raises(FileNotFoundError, match="python -m episodes.digits"):
        load_digits_benchmark(built.parent / "nothing", "target_test")


def test_domain_shift_withholds_target_labels(built: Path) -> None:
    shift = load_domain_shift("digits", built)
    assert isinstance(shift.target_train, UnlabelledImages)
    assert not hasattr(shift.target_train, "labels")
    labelled = load_dataset("digits", built, "target_train")
    assert torch.equal(shift.target_train.images, labelled.images)
    assert shift.class_names == tuple(DIGITS) and shift.num_classes == 10
    assert len(shift.target_test) == 898 and len(shift.source_val) == 10 * COPIES


def test_builds_are_byte_identical(
    built: Path, tmp_path: Path, fonts: tuple[FontSpec, ...]
) -> None:
    reference = file_hashes(built)
    assert len(reference) == 2 * 3 + 2 * 2 + 1
    build(tmp_path / "again", fonts)
    build(tmp_path / "parallel", fonts, workers=2)
    assert file_hashes(tmp_path / "again") == reference
    assert file_hashes(tmp_path / "parallel") == reference
    build(tmp_path / "seed1", fonts, seed=1)
    changed = {k for k, v in file_hashes(tmp_path / "seed1").items() if reference[k] != v}
    assert "cache/source_train-images.npy" in changed and "cache/target_test-labels.npy" in changed


def test_fonts_that_do_not_draw_ten_digits_are_dropped(
    tmp_path: Path, fonts: tuple[FontSpec, ...]
) -> None:
    from fontTools.ttLib import TTFont

    sans = fonts[2]

    def variant(name: str, remap: dict[int, int | None]) -> FontSpec:
        font = TTFont(sans.path)
        for table in font["cmap"].tables:
            if table.isUnicode():
                glyphs = dict(table.cmap)
                for code, source in remap.items():
                    if source is None:
                        table.cmap.pop(code, None)
                    else:
                        table.cmap[code] = glyphs[source]
        font.save(tmp_path / f"{name}.ttf")
        return FontSpec(name, tmp_path / f"{name}.ttf")

    digit = [ord(d) for d in DIGITS]
    candidates = (
        *fonts,
        FontSpec("copy", sans.path),  # the same file under another name
        variant("no-seven", {ord("7"): None}),
        variant("all-zeros", {c: digit[0] for c in digit}),
    )
    manifest = build(tmp_path / "bench", candidates, copies=1)
    assert [f["slug"] for f in manifest["fonts"]] == [f.slug for f in fonts]
    dropped = {f["slug"]: (f["reason"], f["detail"]) for f in manifest["dropped_fonts"]}
    assert dropped == {
        "copy": ("duplicate", "draws the digits of dejavu-sans"),
        "no-seven": ("missing", "does not map 7"),
        "all-zeros": ("indistinct", "digits 0 and 1 look the same"),
    }
    assert manifest["counts"]["dropped"] == {"duplicate": 1, "indistinct": 1, "missing": 1}


def test_fonts_that_the_others_do_not_recognise_are_dropped(tmp_path: Path) -> None:
    from fontTools.ttLib import TTFont

    dejavu = Path("/usr/share/fonts/truetype/dejavu")
    files = sorted(dejavu.glob("DejaVu*.ttf"))
    if len(files) < 6:
        pytest.skip("fonts-dejavu-core not installed")
    specs = [FontSpec(p.stem.lower(), p) for p in files[:6]]
    font = TTFont(files[0])
    for table in font["cmap"].tables:  # every digit draws the next one: 0 -> "1", ...
        if table.isUnicode():
            glyphs = dict(table.cmap)
            for d in range(10):
                table.cmap[ord(str(d))] = glyphs[ord(str((d + 1) % 10))]
    font.save(tmp_path / "shifted.ttf")
    specs.append(FontSpec("shifted", tmp_path / "shifted.ttf"))
    manifest = build(tmp_path / "bench", specs, copies=1, min_recognised=3)
    dropped = {f["slug"]: (f["reason"], f["detail"]) for f in manifest["dropped_fonts"]}
    assert dropped == {"shifted": ("unrecognised", "0 of 10 digits recognised by the others")}
    assert len(manifest["fonts"]) == 6


def test_cli(tmp_path: Path, fonts: tuple[FontSpec, ...], capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    args = ["--out", str(out), "--copies", "1", "--min-recognised", "0", "--workers", "1"]
    args += [a for f in fonts for a in ("--font", f"{f.slug}={f.path}")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "3 fonts of 3 families" in printed and "target_test 898" in printed
    if shutil.which("dpkg-query"):  # --font files get the Debian package that installed them
        manifest = json.loads((out / "manifest.json").read_text())
        assert [f["package"] for f in manifest["fonts"]] == [f.package for f in fonts]
    assert main(args) == 2
    assert "already holds a digits benchmark" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    assert main([*args[:1], str(tmp_path / "other"), *args[2:], "--force"]) == 2
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"
    with pytest.raises(BuildExistsError):
        build(out, fonts)


@pytest.mark.slow
def test_full_benchmark(tmp_path: Path) -> None:
    from episodes.digits import package_fonts
    from episodes.glyphs import MissingFontError

    try:
        specs = package_fonts()
    except MissingFontError as error:
        pytest.skip(str(error))
    manifest = build_digits_benchmark(tmp_path / "digits", specs, workers=2)
    counts = manifest["counts"]
    assert counts["fonts"] >= 600 and counts["families"] >= 450
    assert manifest["splits"]["target_train"] + manifest["splits"]["target_test"] == 1797
    train = load_digits_benchmark(tmp_path / "digits", "source_train")
    val = load_digits_benchmark(tmp_path / "digits", "source_val")
    assert train.class_counts().tolist() == [counts["fonts_per_split"]["source_train"] * 8] * 10
    assert val.class_counts().tolist() == [counts["fonts_per_split"]["source_val"] * 8] * 10
    train_families = {f["family"] for f in manifest["fonts"] if f["split"] == "source_train"}
    val_families = {f["family"] for f in manifest["fonts"] if f["split"] == "source_val"}
    assert not train_families & val_families
