"""``python -m metatl.transfer compare``: the command, its directory, the all-labels budget."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from metatl.config import ConfigError, load_config
from metatl.transfer.__main__ import main
from metatl.transfer.all_labels import check_same_classes
from tests.conftest import make_pattern_images, run_example, write_image_folder


@pytest.fixture(scope="module")
def same_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six classes of 30 images; 20 of each in train, 10 in test (the same classes)."""
    root = tmp_path_factory.mktemp("same-classes")
    data = make_pattern_images(6, 30, seed=4)
    train_part, test_part = data.hold_out(1 / 3, seed=0)
    write_image_folder(root, train_part, "train")
    write_image_folder(root, test_part, "test")
    return root


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "compare",
        "--quick",
        "--source",
        "rnd=conv4@random",
        "data.dataset=image_folder",
        f"data.root={root}",
        "data.val_split=test",
        f"out_dir={out}",
        "compare.way=3",
        "compare.query=4",
        "compare.finetune_blocks=[4]",
        "compare.score_images=40",
        "pretrain.batch_size=16",
        "tracking.wandb.mode=disabled",
        *extra,
    ]


def test_compare_writes_every_budget_paired_with_the_advice(
    same_classes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_args(same_classes, tmp_path, "compare.all_labels=true", "name=cmp")) == 0
    out = tmp_path / "cmp"
    printed = capsys.readouterr().out
    assert "report:" in printed and "| rnd |" in printed
    results = json.loads((out / "results.json").read_text())
    assert list(results["results"]) == ["1", "5", "all"]
    episodic = set(results["results"]["5"])
    assert {"scratch", "pixels/ncm", "rnd/finetune@4", "rnd/ncm@1", "rnd/linear@4"} <= episodic
    assert set(results["results"]["all"]) == episodic
    assert results["results"]["all"]["pixels/ncm"]["episodes"] == 60  # per test image
    assert (out / "runs" / "rnd-finetune@4" / "best.pt").is_file()
    assert (out / "runs" / "scratch" / "best.pt").is_file()
    assert results["advice"] == []  # a random initialisation has no source domain to place
    assert results["meta"]["wall_time_s"] > 0
    assert set(results["rank_correlation"]["all"]) >= {"logme", "leep", "gap"}
    report = (out / "report.md").read_text()
    for heading in ("## Best of each kind", "## Negative transfer", "## Advice", "## Every method"):
        assert heading in report
    assert "rnd: a random initialisation (a control)" in report
    assert (out / "budgets.png").is_file()


def test_all_labels_nearest_mean_on_pixels_is_computed_exactly(
    same_classes: Path, tmp_path: Path
) -> None:
    from metatl.training.data import load_split
    from metatl.transfer.all_labels import _nearest_mean

    config = load_config(None, ["data.dataset=image_folder", f"data.root={same_classes}"])
    train, test = load_split(config.data, "train"), load_split(config.data, "test")
    flat_train = train.images.flatten(1).double() / 255
    flat_test = test.images.flatten(1).double() / 255
    means = torch.stack([flat_train[train.labels == c].mean(0) for c in range(6)])
    expected = (torch.cdist(flat_test, means).argmin(1) == test.labels).double()
    result = _nearest_mean(flat_train, train.labels, flat_test, test)
    assert result.accuracies == tuple(expected.tolist())


def test_bad_comparisons_fail_before_a_directory_is_made(
    same_classes: Path, folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (_args(same_classes, tmp_path, "--source", "bad=nonet@random"), "unknown backbone"),
        (_args(same_classes, tmp_path, "compare.shots=[30]"), "need 3 classes of 34 images"),
        (_args(same_classes, tmp_path, "--source", "rnd=resnet12@random"), "two sources"),
        (
            [*_args(folder_dataset, tmp_path, "compare.all_labels=true"), "data.val_split=val"],
            "need the same classes",
        ),
    ]
    for args, message in cases:
        assert main(args) == 2
        assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    empty = [a for a in _args(same_classes, tmp_path) if a not in ("--source", "rnd=conv4@random")]
    assert main(empty) == 2
    assert "compare.sources is empty" in capsys.readouterr().err


def test_splits_of_other_classes_cannot_make_the_all_labels_budget() -> None:
    data = make_pattern_images(4, 4)
    with pytest.raises(ConfigError, match="compare.all_labels=false"):
        check_same_classes(data, data.select_classes([0, 1], "other"))


def test_the_example_compares_a_trained_source_with_a_random_one() -> None:
    stdout = run_example("transfer_compare.py", "--quick")
    best = dict(re.findall(r"^\| (\w+) \| linear \| ([\d.]+) @", stdout, re.M))
    assert set(best) == {"blobs", "random"}, stdout
    assert float(best["blobs"]) > float(best["random"]) + 10  # what the source learned helps
    assert "| blobs | 5 | small |" in stdout  # the advice, placed on both axes
