"""Target images without labels (UnlabelledImages, DomainShift) and the kanji printed ->
written domain split of a glyph benchmark, plus its corrupted splits (glyphs_c).

The glyph benchmark here is a stand-in written straight into the builder's layout: the 20
default designs, 120 train and 12 test classes, 8x8 images whose first pixel is the font's
index and second the class's, so every image says where it came from.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from episodes import DomainShift, LabelledImages, UnlabelledImages, load_domain_shift
from episodes.corruptions import corrupted
from episodes.datasets import (
    GLYPH_DESIGNS,
    KANJI_DOMAIN_SPLITS,
    design_domains,
    list_datasets,
    load_dataset,
    load_glyphs,
    load_kanji_domains,
)
from episodes.datasets.glyph_domains import UnknownDesignError
from episodes.glyphs import default_fonts

N_TRAIN, N_TEST, SIZE = 120, 12, 8
SLUGS = [f.slug for f in default_fonts()]  # the glyph benchmark's font order
PRINTED = [s for s in SLUGS if GLYPH_DESIGNS[s][1] == "printed"]
WRITTEN = [s for s in SLUGS if GLYPH_DESIGNS[s][1] == "written"]


def write_fake_glyphs(root: Path) -> Path:
    slugs = SLUGS
    chars = [chr(0x4E00 + i) for i in range(N_TRAIN + N_TEST)]
    splits = {"train": chars[:N_TRAIN], "test": chars[N_TRAIN:]}
    (root / "cache").mkdir(parents=True)
    hashes = {}
    for split, members in splits.items():
        images = np.full((len(members), len(slugs), 1, SIZE, SIZE), 255, np.uint8)
        images[:, :, 0, 0, 0] = np.arange(len(slugs))[None, :]
        images[:, :, 0, 0, 1] = np.arange(len(members))[:, None]
        labels = np.repeat(np.arange(len(members), dtype=np.int64), len(slugs))
        for kind, array in (("images", images.reshape(-1, 1, SIZE, SIZE)), ("labels", labels)):
            np.save(root / f"cache/{split}-{kind}.npy", array)
            hashes[f"cache/{split}-{kind}.npy"] = hashlib.sha256(
                (root / f"cache/{split}-{kind}.npy").read_bytes()
            ).hexdigest()
    manifest = {
        "format": "metatl-glyphs",
        "splits": splits,
        "fonts": [{"slug": s} for s in slugs],
        "image_size": SIZE,
        "cache_sha256": hashes,
    }
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def glyphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_glyphs(tmp_path_factory.mktemp("fake") / "glyphs")


def designs_of(data: LabelledImages) -> list[str]:
    return [SLUGS[int(v)] for v in data.images[:, 0, 0, 0]]


# --- UnlabelledImages ---------------------------------------------------------------------


@pytest.fixture
def labelled() -> LabelledImages:
    images = torch.arange(6 * 4, dtype=torch.uint8).reshape(6, 1, 2, 2)
    return LabelledImages(images, torch.tensor([0, 1, 2, 0, 1, 2]), ("a", "b", "c"), "toy")


def test_unlabelled_images_carry_no_labels(labelled: LabelledImages) -> None:
    images = UnlabelledImages.from_labelled(labelled)
    assert not isinstance(images, LabelledImages)
    assert [f.name for f in dataclasses.fields(images)] == ["images", "name"]
    for attribute in ("labels", "class_names", "num_classes", "class_counts"):
        with pytest.raises(AttributeError):
            getattr(images, attribute)
    with pytest.raises((AttributeError, TypeError)):
        images.labels = labelled.labels  # type: ignore[attr-defined]  # frozen, slots
    assert not hasattr(images, "__dict__")
    assert images.name == "toy" and len(images) == 6 and images.image_shape == (1, 2, 2)


def test_unlabelled_images_keep_nothing_of_the_labelled_collection() -> None:
    labelled = LabelledImages(torch.zeros(6, 1, 2, 2, dtype=torch.uint8), torch.zeros(6), ("a",))
    images = UnlabelledImages.from_labelled(labelled, name="target")
    assert images.images is labelled.images  # shared, not copied
    assert all(r is not labelled and r is not labelled.labels for r in gc.get_referents(images))
    alive = weakref.ref(labelled)
    del labelled
    gc.collect()
    assert alive() is None and len(images) == 6


def test_indexing_yields_images_only(labelled: LabelledImages) -> None:
    images = UnlabelledImages.from_labelled(labelled)
    assert torch.equal(images[4], labelled.images[4]) and images[4].shape == (1, 2, 2)
    assert torch.equal(images[[5, 0]], labelled.images[[5, 0]])
    assert torch.equal(images[torch.tensor([1, 2])], labelled.images[1:3])
    assert torch.equal(images[1:3], labelled.images[1:3])
    loader = torch.utils.data.DataLoader(images, batch_size=4, shuffle=False)
    batches = list(loader)
    assert [type(b) for b in batches] == [torch.Tensor, torch.Tensor]
    assert torch.equal(torch.cat(batches), labelled.images)
    subset = images.subset([3, 1])
    assert isinstance(subset, UnlabelledImages) and torch.equal(subset.images, images[[3, 1]])
    assert images.resized(4).images.shape == (6, 1, 4, 4)


def test_unlabelled_images_check_their_tensor() -> None:
    with pytest.raises(ValueError, match="uint8 tensor"):
        UnlabelledImages(torch.zeros(2, 1, 3, 3))
    with pytest.raises(TypeError, match="expected LabelledImages"):
        UnlabelledImages.from_labelled(torch.zeros(2, 1, 3, 3, dtype=torch.uint8))  # type: ignore[arg-type]


def test_domain_shift_takes_target_training_images_without_labels(
    labelled: LabelledImages,
) -> None:
    target = UnlabelledImages.from_labelled(labelled)
    shift = DomainShift(labelled, labelled, target, labelled, "toy")
    assert shift.class_names == ("a", "b", "c") and shift.num_classes == 3
    with pytest.raises(TypeError, match="target_train must be UnlabelledImages"):
        DomainShift(labelled, labelled, labelled, labelled)  # type: ignore[arg-type]
    other = labelled.select_classes([2, 1, 0])
    with pytest.raises(ValueError, match="must share their classes"):
        DomainShift(labelled, labelled, target, other)
    small = UnlabelledImages(torch.zeros(2, 1, 3, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shapes"):
        DomainShift(labelled, labelled, small, labelled)


# --- kanji, printed -> written ------------------------------------------------------------


def test_every_default_design_has_a_domain() -> None:
    assert set(GLYPH_DESIGNS) == set(SLUGS)
    assert len(PRINTED) == len(WRITTEN) == 10
    styles = {style for style, _ in GLYPH_DESIGNS.values()}
    assert {"mincho", "gothic", "rounded", "pixel"} <= styles
    assert {"kaisho", "sosho", "handwriting"} <= styles
    with pytest.raises(UnknownDesignError, match="'mystery'"):
        design_domains({"fonts": [{"slug": "mystery"}]})


def test_domains_share_classes_and_split_designs(glyphs: Path) -> None:
    assert {"kanji_domains", "glyphs_c", "digits"} <= set(list_datasets())
    parts = {s: load_dataset("kanji_domains", glyphs, s) for s in KANJI_DOMAIN_SPLITS}
    train_chars = load_glyphs(glyphs, "train").class_names
    classes = parts["source_train"].class_names
    assert (
        len(classes) == 100
        and set(classes) <= set(train_chars)
        and list(classes) == sorted(classes)
    )
    for split in ("source_val", "target_train", "target_test"):
        assert parts[split].class_names == classes
    expected = {"source_train": 8, "source_val": 2, "target_train": 5, "target_test": 5}
    for split, per_class in expected.items():
        data = parts[split]
        assert data.name == f"kanji_domains/{split}"
        assert data.class_counts().tolist() == [per_class] * 100
        # the image's own class pixel agrees with its label's character
        class_pixel = data.images[:, 0, 0, 1].long()
        assert [train_chars[c] for c in class_pixel] == [classes[y] for y in data.labels]
        domain = PRINTED if split.startswith("source") else WRITTEN
        assert set(designs_of(data)) == set(domain)
    for a, b in (("source_train", "source_val"), ("target_train", "target_test")):
        for c in range(100):  # a class's designs go to one part or the other, all of them
            da = {d for d, y in zip(designs_of(parts[a]), parts[a].labels, strict=True) if y == c}
            db = {d for d, y in zip(designs_of(parts[b]), parts[b].labels, strict=True) if y == c}
            assert not da & db and len(da | db) == 10
    fewshot = parts["target_fewshot"]
    assert fewshot.class_names == load_glyphs(glyphs, "test").class_names
    assert not set(fewshot.class_names) & set(classes)
    assert fewshot.class_counts().tolist() == [10] * N_TEST
    assert designs_of(fewshot)[:10] == WRITTEN


def test_domain_split_is_seeded(glyphs: Path) -> None:
    first = load_kanji_domains(glyphs, "target_test", seed=0)
    assert torch.equal(load_kanji_domains(glyphs, "target_test", seed=0).images, first.images)
    other = load_kanji_domains(glyphs, "target_test", seed=1)
    assert other.class_names != first.class_names
    few = load_kanji_domains(glyphs, "source_train", n_classes=7)
    assert few.num_classes == 7 and len(few) == 7 * 8
    resized = load_kanji_domains(glyphs, "source_val", image_size=4)
    assert resized.image_shape == (1, 4, 4)
    with pytest.raises(ValueError, match="n_classes must lie in 1..120"):
        load_kanji_domains(glyphs, "source_train", n_classes=121)
    with pytest.raises(ValueError, match="unknown split 'train'"):
        load_kanji_domains(glyphs, "train")


def test_load_domain_shift_of_the_kanji(glyphs: Path) -> None:
    shift = load_domain_shift("kanji_domains", glyphs, image_size=SIZE)
    assert shift.name == "kanji_domains" and shift.num_classes == 100
    assert isinstance(shift.target_train, UnlabelledImages)
    assert len(shift.target_train) == 500 and len(shift.target_test) == 500
    labelled = load_dataset("kanji_domains", glyphs, "target_train")
    assert torch.equal(shift.target_train.images, labelled.images)


def test_corrupted_glyph_splits(glyphs: Path) -> None:
    clean = load_glyphs(glyphs, "test")
    assert torch.equal(load_dataset("glyphs_c", glyphs, "test").images, clean.images)
    noisy = load_dataset("glyphs_c", glyphs, "test-gaussian_noise-3")
    assert noisy.name == "glyphs_c/test-gaussian_noise-3"
    assert torch.equal(noisy.images, corrupted(clean, "gaussian_noise", 3, seed=0).images)
    assert torch.equal(noisy.labels, clean.labels)
    small = load_dataset("glyphs_c", glyphs, "train-contrast-1", image_size=4)
    assert small.image_shape == (1, 4, 4)
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        load_dataset("glyphs_c", glyphs, "test-fog-2")
