"""The pretrained-backbone and W&B sweep examples, run in their quick mode."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_example
from tests.test_pretrained import real_weights_or_skip

REPO = Path(__file__).parents[1]


def test_imagenet_mobilenet_probe_and_finetune_are_scored_on_the_same_episodes() -> None:
    real_weights_or_skip()
    stdout = run_example("pretrained_probe_finetune.py", "--quick")
    assert "blobs/test: 10 classes, 200 images, 56x56 px" in stdout, stdout
    found = re.findall(r"^(\w+) 5-way 1-shot: ([\d.]+) ± ([\d.]+) %$", stdout, re.M)
    scores = {name: (float(mean), float(ci)) for name, mean, ci in found}
    assert list(scores) == ["linear", "finetune"], stdout
    for mean, ci in scores.values():
        assert 35 < mean <= 100 and 0 < ci < 15  # 5-way: chance is 20%
    paired = re.search(
        r"^finetune - linear, paired over 20 episodes: ([+-][\d.]+) ± ([\d.]+)", stdout, re.M
    )
    assert paired is not None, stdout
    difference, ci = float(paired[1]), float(paired[2])
    # The mean of the per-episode differences is the difference of the means (to rounding),
    # and pairing on the same episodes narrows the interval below either method's own.
    assert difference == pytest.approx(scores["finetune"][0] - scores["linear"][0], abs=0.011)
    assert 0 < ci < min(c for _, c in scores.values())


def test_missing_imagenet_weights_fail_at_once_naming_make_weights(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "examples/pretrained_probe_finetune.py", "--quick"],
        cwd=REPO,
        env={**os.environ, "TORCH_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and result.stdout == "", result
    assert "mobilenet_v2-b0353104.pth is not in" in result.stderr
    assert "downloads are off" in result.stderr  # never fetched at run time
    assert "`make weights` installs these weights offline" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.pth"))


def test_the_sweep_example_runs_its_spec_offline_and_ranks_the_trials(tmp_path: Path) -> None:
    stdout = run_example("wandb_sweep.py", "--quick", "--out-dir", str(tmp_path))
    spec = yaml.safe_load((tmp_path / "protonet_lr_shot.yaml").read_text())
    assert spec["command"][:4] == ["${env}", "${interpreter}", "-m", "metatl.train"]
    assert spec["command"][-1] == "${args}"  # the agent passes --key=value
    assert "optim.lr:\n    values:\n    - 0.003\n    - 0.0003" in stdout  # the spec is shown
    grid = {(lr, shot) for lr in (0.003, 0.0003) for shot in (1, 5)}

    rows = re.findall(
        r"^\| (\d) \| (trial-\d+) \| optim\.lr=([\d.]+), episodes\.shot=(\d) \| ([\d.]+) "
        r"\| finished \|",
        stdout,
        re.M,
    )
    assert [int(rank) for rank, *_ in rows] == [1, 2, 3], stdout
    metrics = [float(metric) for *_, metric in rows]
    assert metrics == sorted(metrics, reverse=True)  # ranked by val/best_accuracy
    assert all(0.2 < m <= 1 for m in metrics)  # 5-way validation: chance is 20%
    params = {(float(lr), int(shot)) for _, _, lr, shot, _ in rows}
    assert len(params) == 3 and params <= grid  # three distinct grid points

    (sweep_dir,) = (p for p in tmp_path.iterdir() if p.is_dir())
    results = json.loads((sweep_dir / "results.json").read_text())
    assert results["best"] == rows[0][1] and results["ended"] == "3 trial(s) run"
    for trial, (_, name, *_rest) in zip(results["trials"], rows, strict=True):
        assert trial["name"] == name
        run = json.loads((sweep_dir / "trials" / name / "results.json").read_text())
        # The trial trained with the parameter values the sweep gave it, W&B off.
        assert run["config"]["optim"]["lr"] == trial["params"]["optim.lr"]
        assert run["config"]["episodes"]["shot"] == trial["params"]["episodes.shot"]
        assert run["config"]["train"]["steps"] == 20
        assert run["config"]["tracking"]["wandb"]["mode"] == "disabled"
        assert run["best_val"]["accuracy"] == pytest.approx(trial["metric"])
