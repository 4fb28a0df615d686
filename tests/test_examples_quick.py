"""Examples not covered by a feature's own tests, run in their quick mode."""

from __future__ import annotations

import re

from tests.conftest import run_example


def test_maml_step_by_step_adapts_in_the_steps_it_was_trained_for() -> None:
    stdout = run_example("maml_step_by_step.py", "--quick")
    rows = re.findall(r"^(\S+) adapt=(\S+): .*: ((?:\d+% ?){6})$", stdout, re.M)
    assert [(name, adapt) for name, adapt, _ in rows] == [
        ("maml", "all"),
        ("anil", "head"),
        ("maml", "top:1"),
    ], stdout
    for _, _, accuracies in rows:
        by_step = [int(a.rstrip("%")) for a in accuracies.split()]
        assert by_step[0] == 20  # a zero head before any step: 1/way
        assert by_step[1] > 60  # one step, as meta-trained: far above chance


def test_quick_start_trains_from_python_and_scores_unseen_classes() -> None:
    stdout = run_example("quick_start.py", "--quick")
    found = re.findall(r"^protonet 5-way (\d)-shot: ([\d.]+) ± ([\d.]+) %$", stdout, re.M)
    accuracy = {int(shot): float(mean) for shot, mean, _ in found}
    assert sorted(accuracy) == [1, 5], stdout
    assert accuracy[1] > 60  # 8 unseen classes, 5-way: chance is 20%
    assert accuracy[5] > accuracy[1]


def test_a_registered_backbone_is_named_from_a_yaml_config() -> None:
    stdout = run_example("custom_backbone.py", "--quick")
    rows = dict(re.findall(r"^\| 5-way (\d)-shot \| ([\d.]+) ±", stdout, re.M))
    assert sorted(rows) == ["1", "5"], stdout
    assert float(rows["1"]) > 40  # 5-way: chance is 20%
    assert "backbone: TwoBlockNet with 2 blocks" in stdout  # the run used it


def test_domain_adaptation_lifts_the_shifted_target_without_its_labels() -> None:
    stdout = run_example("domain_adaptation.py", "--quick")
    header, row = re.findall(r"^\| (setting|target test images) \| (.*) \|$", stdout, re.M)[:2]
    names = header[1].split(" | ")
    means = [float(cell.split(" ± ")[0]) for cell in row[1].split(" | ")]
    accuracy = dict(zip(names, means, strict=True))
    assert set(accuracy) == {
        f"{m}{t}" for m in ("source_only", "dann", "mcc") for t in ("", "+adabn", "+tent")
    } - {"source_only+adabn", "source_only+tent"} | {"adabn", "tent"}, stdout
    # The target is the source at a third of the contrast, brighter: a classifier trained on
    # the source is at chance (6 classes) there; BatchNorm statistics of the target undo it.
    assert accuracy["source_only"] < 40
    assert accuracy["adabn"] > 90 and accuracy["tent"] > 90
    # The selection tables and the paired differences against source only are printed.
    assert stdout.count("| oracle |") == 3
    assert re.search(r"^\| adabn − source_only \| \+\d", stdout, re.M), stdout


def test_corruption_robustness_recovers_low_contrast_with_adabn_and_tent(tmp_path) -> None:
    stdout = run_example("corruption_robustness.py", "--quick", "--plot", str(tmp_path / "c.png"))
    rows = {
        name: [float(cell.split(" ± ")[0]) for cell in cells.split(" | ")]
        for name, cells in re.findall(
            r"^\| ((?:clean|gaussian_noise|contrast)[ \d]*) \| (.*) \|$", stdout, re.M
        )
    }
    assert set(rows) == {
        "clean",
        "gaussian_noise 3",
        "gaussian_noise 5",
        "contrast 3",
        "contrast 5",
    }
    source_only, adabn, tent = rows["contrast 5"]
    assert source_only < 90 < adabn and tent > 90  # same episodes: a paired gain of 10+ points
    assert rows["clean"][0] > 95
    assert (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG")
