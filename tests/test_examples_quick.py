"""Examples not covered by a feature's own tests, run in their quick mode."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def test_maml_step_by_step_adapts_in_the_steps_it_was_trained_for() -> None:
    result = subprocess.run(
        [sys.executable, "examples/maml_step_by_step.py", "--quick"],
        cwd=Path(__file__).parents[1],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    rows = re.findall(r"^(\S+) adapt=(\S+): .*: ((?:\d+% ?){6})$", result.stdout, re.M)
    assert [(name, adapt) for name, adapt, _ in rows] == [
        ("maml", "all"),
        ("anil", "head"),
        ("maml", "top:1"),
    ], result.stdout
    for _, _, accuracies in rows:
        by_step = [int(a.rstrip("%")) for a in accuracies.split()]
        assert by_step[0] == 20  # a zero head before any step: 1/way
        assert by_step[1] > 60  # one step, as meta-trained: far above chance


def test_quick_start_trains_from_python_and_scores_unseen_classes() -> None:
    result = subprocess.run(
        [sys.executable, "examples/quick_start.py", "--quick"],
        cwd=Path(__file__).parents[1],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    found = re.findall(r"^protonet 5-way (\d)-shot: ([\d.]+) ± ([\d.]+) %$", result.stdout, re.M)
    accuracy = {int(shot): float(mean) for shot, mean, _ in found}
    assert sorted(accuracy) == [1, 5], result.stdout
    assert accuracy[1] > 60  # 8 unseen classes, 5-way: chance is 20%
    assert accuracy[5] > accuracy[1]


def test_a_registered_backbone_is_named_from_a_yaml_config() -> None:
    result = subprocess.run(
        [sys.executable, "examples/custom_backbone.py", "--quick"],
        cwd=Path(__file__).parents[1],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    rows = dict(re.findall(r"^\| 5-way (\d)-shot \| ([\d.]+) ±", result.stdout, re.M))
    assert sorted(rows) == ["1", "5"], result.stdout
    assert float(rows["1"]) > 40  # 5-way: chance is 20%
    assert "backbone: TwoBlockNet with 2 blocks" in result.stdout  # the run used it
