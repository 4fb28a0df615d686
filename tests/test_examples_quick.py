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
