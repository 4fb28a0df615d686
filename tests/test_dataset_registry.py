"""Datasets by name: one registry for Python, run configs and sweeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from episodes import LabelledImages
from episodes.datasets import (
    UnknownDatasetError,
    UnknownSplitError,
    list_datasets,
    load_dataset,
    register_dataset,
)
from episodes.datasets import registry as registry_module
from metatl.config import ConfigError, load_config
from metatl.training.data import load_split
from tests.conftest import make_pattern_images


def test_every_reader_is_registered_by_name(folder_dataset: Path) -> None:
    assert set(list_datasets()) >= {
        "glyphs",
        "image_folder",
        "omniglot",
        "mini_imagenet",
        "fashion_mnist",
        "cifar_fs",
        "cub",
    }
    test = load_dataset("image_folder", folder_dataset, "test", image_size=14)
    assert test.num_classes == 8 and test.image_shape == (1, 14, 14)
    with pytest.raises(UnknownDatasetError, match="registered datasets: cifar_fs, cub"):
        load_dataset("imagenet21k", folder_dataset, "test")
    with pytest.raises(UnknownSplitError, match="omniglot has the splits train, val, test"):
        load_dataset("omniglot", folder_dataset, "holdout")


def test_a_registered_dataset_is_a_choice_of_the_run_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match="data.dataset='blobs' is not allowed"):
        load_config(None, ["data.dataset=blobs"])
    monkeypatch.setattr(registry_module, "_DATASETS", dict(registry_module._DATASETS))
    seen = []

    @register_dataset("blobs")
    def _blobs(root: Path, split: str, image_size: int | None) -> LabelledImages:
        seen.append((root, split, image_size))
        return make_pattern_images(5, 4, size=image_size or 28)

    config = load_config(None, ["data.dataset=blobs", "data.root=somewhere"])
    data = load_split(config.data, "val")
    assert seen == [(Path("somewhere"), "val", 28)] and data.num_classes == 5
    with pytest.warns(UserWarning, match="registered twice"):
        register_dataset("blobs")(_blobs)


def test_blob_folders_are_seeded_image_folders_with_disjoint_classes(tmp_path: Path) -> None:
    from episodes.synthetic import write_blob_folder

    root = write_blob_folder(tmp_path / "a", {"train": 3, "test": 2}, 4, noise=30.0, seed=2)
    train = load_dataset("image_folder", root, "train")
    test = load_dataset("image_folder", root, "test")
    assert train.class_names == ("class00", "class01", "class02") and len(train) == 12
    assert test.class_names == ("class03", "class04") and test.image_shape == (1, 28, 28)
    again = write_blob_folder(tmp_path / "b", {"train": 3, "test": 2}, 4, noise=30.0, seed=2)
    assert (again / "test/class04/3.png").read_bytes() == (root / "test/class04/3.png").read_bytes()
