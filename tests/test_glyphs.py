"""The glyph benchmark builder (episodes.glyphs) and its reader (episodes.datasets.glyphs).

The fast tests render a dozen kanji in two small fonts (fonts-misaki, fonts-motoya-l-maruberi);
the ``slow`` test builds the real 20-font benchmark.
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
from PIL import Image

from episodes.datasets._decode import DatasetFormatError
from episodes.datasets.glyphs import glyph_splits, load_glyphs, read_glyph_manifest
from episodes.glyphs import (
    RENDERER_VERSION,
    BuildExistsError,
    FontSpec,
    MissingFontError,
    build_glyph_benchmark,
    codepoint_name,
    default_fonts,
    jis_level1_kanji,
    main,
    parse_font_arg,
    read_characters,
    render_glyphs,
    split_classes,
)

KANJI = "亜愛悪握圧扱安案暗以衣位"  # 12 level-1 kanji both test fonts map
NOT_IN_MISAKI = "𠮷😀"  # outside JIS X 0208: misaki (and maruberi) lack them
BLANK = "\u3000"  # ideographic space: mapped by both, renders no ink
SIZE, MARGIN = 84, 6


def require_fonts(*slugs: str) -> tuple[FontSpec, ...]:
    """The default ``FontSpec``s of ``slugs``; skip (or fail under CI) if any is missing."""
    by_slug = {f.slug: f for f in default_fonts()}
    specs = tuple(by_slug[slug] for slug in slugs)
    missing = sorted({f.package for f in specs if not f.path.is_file()})
    if missing:
        message = f"test fonts not installed: apt-get install {' '.join(missing)}"
        if os.environ.get("METATL_REQUIRE_TEST_FONTS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return specs


@pytest.fixture(scope="module")
def fonts() -> tuple[FontSpec, ...]:
    return require_fonts("misaki-gothic", "maruberi")


def build(out: Path, fonts: tuple[FontSpec, ...], **kw: object) -> dict:
    options = {"seed": 0, "n_val": 3, "n_test": 4, "workers": 1} | kw
    return build_glyph_benchmark(out, fonts, KANJI + NOT_IN_MISAKI + BLANK, **options)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, fonts: tuple[FontSpec, ...]) -> Path:
    out = tmp_path_factory.mktemp("glyphs") / "bench"
    build(out, fonts)
    return out


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def ink_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``, exclusive ends, of the pixels darker than white."""
    ys, xs = np.nonzero(image < 255)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


# --- character set, fonts, splits -------------------------------------------------------------


def test_jis_level1_kanji() -> None:
    chars = jis_level1_kanji()
    assert len(chars) == len(set(chars)) == 2965
    assert (chars[0], chars[1], chars[-1]) == ("亜", "唖", "腕")
    assert sum(c.encode("euc_jp")[0] == 0xCF for c in chars) == 51  # row 47
    assert all(0x4E00 <= ord(c) <= 0x9FFF for c in chars)


def test_default_fonts_table() -> None:
    specs = default_fonts("/nowhere")
    assert len(specs) == 20 and len({f.slug for f in specs}) == 20
    assert len({f.package for f in specs}) == 18
    assert all(str(f.path).startswith("/nowhere/") for f in specs)
    faces = {f.slug: f.face for f in specs if f.path.suffix == ".ttc"}
    assert faces == {
        "noto-sans": "Noto Sans CJK JP",
        "noto-serif": "Noto Serif CJK JP",
        "arphic-ukai": "AR PL UKai TW",
    }


def test_missing_font_names_its_package(tmp_path: Path) -> None:
    spec = FontSpec("gone", tmp_path / "gone.ttf", package="fonts-gone")
    with pytest.raises(MissingFontError, match=r"apt-get install fonts-gone"):
        build_glyph_benchmark(tmp_path / "out", [spec], KANJI)
    assert not (tmp_path / "out").exists()


def test_font_slug_must_be_file_safe() -> None:
    with pytest.raises(ValueError, match="slug"):
        FontSpec("Has Space", "x.ttf")


def test_split_classes() -> None:
    chars = [chr(0x4E00 + i) for i in range(50)]
    splits = split_classes(chars[::-1], seed=3, n_val=5, n_test=10)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [35, 5, 10]
    assert sorted(c for members in splits.values() for c in members) == chars  # a partition
    assert all(members == sorted(members) for members in splits.values())
    assert split_classes(chars, seed=3, n_val=5, n_test=10) == splits
    assert split_classes(chars, seed=4, n_val=5, n_test=10) != splits
    # a permutation of the sorted list, validation first
    order = np.random.default_rng(3).permutation(50)
    assert splits["val"] == sorted(chars[i] for i in order[:5])
    with pytest.raises(ValueError, match="cannot split 50 classes"):
        split_classes(chars, n_val=20, n_test=30)


def test_read_characters_and_font_arg(tmp_path: Path) -> None:
    path = tmp_path / "chars.txt"
    path.write_text("亜 愛\n亜\t悪\n", encoding="utf-8")
    assert read_characters(path) == "亜愛悪"
    spec = parse_font_arg(f"mine={tmp_path}/f.ttc:2")
    assert (spec.slug, spec.path, spec.face) == ("mine", tmp_path / "f.ttc", 2)
    spec = parse_font_arg(f"mine={tmp_path}/f.ttc:Some Face JP")
    assert spec.face == "Some Face JP"


# --- rendering ------------------------------------------------------------------------------


def test_render_centres_and_scales_the_ink(fonts: tuple[FontSpec, ...]) -> None:
    for spec in fonts:
        images, blank = render_glyphs(spec, KANJI + BLANK, SIZE, MARGIN)
        assert images.dtype == np.uint8 and images.shape == (13, SIZE, SIZE)
        assert blank == [False] * 12 + [True]
        assert (images[-1] == 255).all()
        for image in images[:-1]:
            x0, y0, x1, y1 = ink_box(image)
            assert min(x0, y0) >= MARGIN and max(x1, y1) <= SIZE - MARGIN  # margin kept
            assert max(x1 - x0, y1 - y0) == SIZE - 2 * MARGIN  # longest side fills the box
            assert abs((x0 + x1) / 2 - SIZE / 2) <= 1 and abs((y0 + y1) / 2 - SIZE / 2) <= 1
            assert image.min() == 0 and image.max() == 255  # solid ink on white


def test_ttc_face_by_name_or_index(tmp_path: Path, fonts: tuple[FontSpec, ...]) -> None:
    from fontTools.ttLib import TTCollection, TTFont

    collection = TTCollection()
    collection.fonts = [TTFont(f.path) for f in fonts]
    collection.save(tmp_path / "both.ttc")
    by_name = FontSpec("maru", tmp_path / "both.ttc", "MotoyaLMaru")
    by_index = FontSpec("maru", tmp_path / "both.ttc", 1)
    reference = render_glyphs(fonts[1], KANJI[:3], 28, 2)[0]
    np.testing.assert_array_equal(render_glyphs(by_name, KANJI[:3], 28, 2)[0], reference)
    np.testing.assert_array_equal(render_glyphs(by_index, KANJI[:3], 28, 2)[0], reference)
    with pytest.raises(ValueError, match="0: MisakiGothic.*1: MotoyaLMaru"):
        render_glyphs(FontSpec("x", tmp_path / "both.ttc"), KANJI[:1])


# --- the build ------------------------------------------------------------------------------


def test_coverage_and_blank_filters(built: Path, fonts: tuple[FontSpec, ...]) -> None:
    from fontTools.ttLib import TTFont

    misaki = TTFont(fonts[0].path, lazy=True).getBestCmap()
    assert all(ord(c) not in misaki for c in NOT_IN_MISAKI)
    manifest = read_glyph_manifest(built)
    assert manifest["characters"] == sorted(KANJI)
    dropped = {d["char"]: (d["reason"], d["fonts"]) for d in manifest["dropped"]}
    assert dropped == {
        "𠮷": ("missing", ["misaki-gothic", "maruberi"]),
        "😀": ("missing", ["misaki-gothic", "maruberi"]),
        BLANK: ("blank", ["misaki-gothic", "maruberi"]),
    }
    assert manifest["counts"]["per_font"]["misaki-gothic"] == {"missing": 2, "blank": 1}


def test_manifest_contents(built: Path, fonts: tuple[FontSpec, ...]) -> None:
    manifest = json.loads((built / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["format"] == "metatl-glyphs"
    assert manifest["renderer_version"] == RENDERER_VERSION
    assert (manifest["image_size"], manifest["margin"], manifest["seed"]) == (SIZE, MARGIN, 0)
    assert [f["slug"] for f in manifest["fonts"]] == ["misaki-gothic", "maruberi"]
    for entry, spec in zip(manifest["fonts"], fonts, strict=True):
        assert entry["file"] == str(spec.path) and entry["package"] == spec.package
        assert entry["face_index"] == 0
        assert entry["sha256"] == hashlib.sha256(spec.path.read_bytes()).hexdigest()
    assert [f["family"] for f in manifest["fonts"]] == ["MisakiGothic", "MotoyaLMaru"]
    assert manifest["splits"] == split_classes(KANJI, seed=0, n_val=3, n_test=4)
    counts = manifest["counts"]
    assert (counts["requested"], counts["kept"], counts["dropped"]) == (15, 12, 3)
    assert counts["images"] == 24
    assert {s: c["classes"] for s, c in counts["splits"].items()} == {
        "train": 5,
        "val": 3,
        "test": 4,
    }
    hashes = file_hashes(built)
    assert manifest["cache_sha256"] == {k: v for k, v in hashes.items() if k.startswith("cache/")}
    assert len(manifest["cache_sha256"]) == 6


def test_layout_and_cache_match_pngs(built: Path) -> None:
    manifest = read_glyph_manifest(built)
    assert sorted(p.name for p in built.iterdir()) == ["cache", "images", "manifest.json"]
    for split, members in manifest["splits"].items():
        images = np.load(built / f"cache/{split}-images.npy")
        labels = np.load(built / f"cache/{split}-labels.npy")
        assert images.dtype == np.uint8 and images.shape == (2 * len(members), 1, SIZE, SIZE)
        assert labels.dtype == np.int64 and labels.tolist() == [
            i for i in range(len(members)) for _ in range(2)
        ]
        class_dirs = sorted(p.name for p in (built / "images" / split).iterdir())
        assert class_dirs == sorted(codepoint_name(c) for c in members)
        slugs = ("misaki-gothic", "maruberi")
        pngs = [f"{codepoint_name(c)}/{slug}.png" for c in members for slug in slugs]
        for i, png_name in enumerate(pngs):
            png = Image.open(built / "images" / split / png_name)
            assert png.mode == "L"
            np.testing.assert_array_equal(np.asarray(png), images[i, 0])
        for image in images[:, 0]:  # every stored glyph is centred with its margin
            x0, y0, x1, y1 = ink_box(image)
            assert min(x0, y0) >= MARGIN and max(x1, y1) <= SIZE - MARGIN
            assert abs((x0 + x1) / 2 - SIZE / 2) <= 1 and abs((y0 + y1) / 2 - SIZE / 2) <= 1


def test_builds_are_byte_identical(
    built: Path, tmp_path: Path, fonts: tuple[FontSpec, ...]
) -> None:
    build(tmp_path / "again", fonts, workers=1)
    build(tmp_path / "parallel", fonts, workers=2)
    reference = file_hashes(built)
    assert len(reference) == 12 * 2 + 6 + 1
    assert file_hashes(tmp_path / "again") == reference
    assert file_hashes(tmp_path / "parallel") == reference
    other = build(tmp_path / "seed1", fonts, seed=1)
    assert other["splits"] != read_glyph_manifest(built)["splits"]


def test_refuses_to_overwrite(tmp_path: Path, fonts: tuple[FontSpec, ...]) -> None:
    out = tmp_path / "bench"
    build(out, fonts)
    before = file_hashes(out)
    with pytest.raises(BuildExistsError, match="complete glyph benchmark.*--force"):
        build(out, fonts, seed=1)
    assert file_hashes(out) == before
    build(out, fonts, seed=1, force=True)
    assert read_glyph_manifest(out)["seed"] == 1
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(BuildExistsError, match="non-empty directory that holds no glyph"):
            build(foreign, fonts, force=force)
    assert (foreign / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    build(empty, fonts)
    assert read_glyph_manifest(empty)["seed"] == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_force_replaces_only_a_benchmark(
    tmp_path: Path, fonts: tuple[FontSpec, ...], capsys: pytest.CaptureFixture
) -> None:
    """``--force`` replaces an earlier build; anything else survives it byte for byte."""
    (tmp_path / "chars.txt").write_text(KANJI + "\n", encoding="utf-8")
    argv = ["--chars-file", str(tmp_path / "chars.txt"), "--workers", "1", "--force"]
    argv += [f"--font={f.path}" for f in fonts] + ["--val", "2", "--test", "2", "--size", "28"]
    bench = tmp_path / "bench"
    assert main(["--out", str(bench), *argv]) == 0
    foreign = tmp_path / "foreign"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "notes.txt").write_text("keep me")
    (foreign / "sub" / "data.bin").write_bytes(bytes(range(256)))
    not_ours = tmp_path / "not_ours"  # a manifest.json of some other tool
    not_ours.mkdir()
    (not_ours / "manifest.json").write_text('{"format": "other", "splits": {"train": ["a"]}}')
    broken = tmp_path / "broken"
    shutil.copytree(bench, broken)
    (broken / "manifest.json").write_text('{"format": "metatl-glyphs"}')  # not the builder's
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    link = tmp_path / "link"
    link.symlink_to(bench)
    everything, foreign_before = file_hashes(tmp_path), file_hashes(foreign)
    for out in (foreign, not_ours, broken, a_file, link):
        assert main(["--out", str(out), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {out} is ") and err.count("\n") == 1
        assert "refusing to replace it" in err and "--force" not in err
        assert file_hashes(tmp_path) == everything
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert main(["--out", str(bench), *argv, "--seed", "1"]) == 0  # an earlier build: replaced
    assert read_glyph_manifest(bench)["seed"] == 1
    assert file_hashes(foreign) == foreign_before


def test_failed_rebuild_keeps_the_earlier_build(
    tmp_path: Path, fonts: tuple[FontSpec, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rebuild goes to a temporary sibling; the earlier build is swapped out only at the end."""
    import episodes.glyphs.build as build_module

    out = tmp_path / "bench"
    build(out, fonts)
    before = file_hashes(out)

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build_module, "write_split", disk_full)
    with pytest.raises(OSError, match="No space left"):
        build(out, fonts, seed=1, force=True)
    assert file_hashes(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["bench"]  # no partial build left behind


def test_failed_build_leaves_nothing(tmp_path: Path, fonts: tuple[FontSpec, ...]) -> None:
    with pytest.raises(ValueError, match="cannot split 12 classes"):
        build(tmp_path / "bench", fonts, n_val=6, n_test=6)
    assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path: Path, fonts: tuple[FontSpec, ...], capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "chars.txt").write_text(KANJI + "\n", encoding="utf-8")
    out = tmp_path / "bench"
    argv = ["--out", str(out), "--chars-file", str(tmp_path / "chars.txt")]
    argv += [f"--font={f.path}" for f in fonts] + ["--val", "2", "--test", "2", "--size", "28"]
    assert main([*argv, "--workers", "1"]) == 0
    assert "12 classes x 2 fonts = 24 images (train 8, val 2, test 2)" in capsys.readouterr().out
    manifest = read_glyph_manifest(out)
    assert [f["slug"] for f in manifest["fonts"]] == ["misakigothic", "motoyalmaru"]
    assert manifest["image_size"] == 28
    assert main([*argv, "--workers", "1"]) == 2  # refused: an earlier build, no --force
    assert "--force" in capsys.readouterr().err


# --- the reader -----------------------------------------------------------------------------


def test_load_glyphs(built: Path) -> None:
    manifest = read_glyph_manifest(built)
    assert glyph_splits(built) == ("train", "val", "test")
    for split, members in manifest["splits"].items():
        data = load_glyphs(built, split)
        assert data.name == f"glyphs/{split}"
        assert data.class_names == tuple(members) and data.num_classes == len(members)
        assert data.images.shape == (2 * len(members), 1, SIZE, SIZE)
        assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
        assert data.class_counts().tolist() == [2] * len(members)
        cache = np.load(built / f"cache/{split}-images.npy")
        assert torch.equal(data.images, torch.from_numpy(cache))
    data.images[0] = 0  # copy-on-write: the cache file is unchanged
    assert torch.equal(load_glyphs(built, split).images, torch.from_numpy(cache))
    small = load_glyphs(built, "train", image_size=28)
    assert small.images.shape == (10, 1, 28, 28)
    cache = np.load(built / "cache/train-images.npy").astype(np.float64)
    expected = cache.reshape(10, 1, 28, 3, 28, 3).mean(axis=(3, 5))
    assert np.abs(small.images.numpy() - expected).max() <= 0.5 + 1e-9
    assert torch.equal(small.labels, load_glyphs(built, "train").labels)
    assert load_glyphs(built, "val", image_size=SIZE).images.shape[-1] == SIZE


def test_reader_errors(built: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_glyphs(tmp_path / "nothing", "train")
    assert str(info.value) == (
        f"no glyph benchmark at {tmp_path / 'nothing'}: that directory does not exist; expected "
        "manifest.json and cache/ there, as written by `python -m episodes.glyphs --out DIR`, "
        "which builds one if none exists anywhere"
    )
    with pytest.raises(ValueError, match=r"unknown glyph split 'dev'.*\['test', 'train', 'val'\]"):
        load_glyphs(built, "dev")
    with pytest.raises(ValueError, match="image_size"):
        load_glyphs(built, "train", image_size=0)
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    np.save(copy / "cache/val-images.npy", np.zeros((5, 1, SIZE, SIZE), np.uint8))
    with pytest.raises(DatasetFormatError, match=r"val-images\.npy .*--force"):
        load_glyphs(copy, "val")
    np.save(copy / "cache/test-labels.npy", np.zeros(8, np.int64))
    with pytest.raises(DatasetFormatError, match=r"test-labels\.npy"):
        load_glyphs(copy, "test")
    images = np.load(copy / "cache/train-images.npy")
    images[0, 0, 0, 0] = 0
    np.save(copy / "cache/train-images.npy", images)
    assert len(load_glyphs(copy, "train")) == 10  # shapes still agree
    with pytest.raises(DatasetFormatError, match="SHA-256"):
        load_glyphs(copy, "train", verify=True)
    (copy / "cache/train-labels.npy").unlink()
    with pytest.raises(DatasetFormatError, match="missing"):
        load_glyphs(copy, "train")


# --- the real benchmark ---------------------------------------------------------------------


@pytest.mark.slow
def test_full_benchmark(tmp_path: Path) -> None:
    specs = require_fonts(*(f.slug for f in default_fonts()))
    manifest = build_glyph_benchmark(tmp_path / "glyphs", specs, workers=2)
    counts = manifest["counts"]
    assert 2800 <= counts["kept"] <= 2900 and counts["fonts"] == 20
    assert {s: c["classes"] for s, c in counts["splits"].items()} == {
        "train": counts["kept"] - 800,
        "val": 300,
        "test": 500,
    }
    for split in ("train", "val", "test"):
        data = load_glyphs(tmp_path / "glyphs", split, image_size=28)
        assert data.class_counts().tolist() == [20] * data.num_classes
        assert data.images.shape[1:] == (1, 28, 28)
