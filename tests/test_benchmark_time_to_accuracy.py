"""Harness row 6 (``benchmarks/time_to_accuracy.py``): the MAML preset trained with metatl and
with learn2learn to a validation accuracy, on the same episodes.

The quick run trains both on synthetic blobs for 30 steps through ``python -m benchmarks``;
the learn2learn half runs only if ``bash benchmarks/install_peers.sh`` installed it."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.methods import PEER_SITE
from benchmarks.time_to_accuracy import summarise, time_to

REPO = Path(__file__).parents[1]
# Looked up without load_peers, which would put the peers on this process's sys.path for the
# tests that follow (test_example_from_learn2learn asks whether learn2learn is importable).
HAS_L2L = (
    importlib.util.find_spec("learn2learn") is not None
    or importlib.machinery.PathFinder.find_spec("learn2learn", [str(PEER_SITE)]) is not None
)


def curve(*points: tuple[int, float, float]) -> list[dict]:
    return [{"step": s, "train_s": t, "accuracy": a, "ci95": 0.01} for s, t, a in points]


def test_time_to_is_the_training_time_of_the_first_validation_at_the_target() -> None:
    points = curve((50, 30.0, 0.7), (100, 61.0, 0.91), (150, 90.0, 0.89), (200, 121.0, 0.95))
    assert time_to(points, 0.9) == 61.0
    assert time_to(points, 0.95) == 121.0
    assert time_to(points, 0.96) is None


def test_summary_pairs_the_test_episodes_against_metatl() -> None:
    def result(accuracies: list[float], times: list[float], points: list[dict]) -> dict:
        test = {"1": {"accuracies": accuracies, "episode_set": "blobs seed 4"}}
        return {"step_times": times, "curve": points, "test": test}

    results = {
        "metatl": result([0.6, 0.8, 1.0], [1.0, 2.0, 3.0], curve((3, 6.0, 0.92))),
        "learn2learn": result([0.4, 0.8, 0.9], [2.0, 2.0, 2.0], curve((3, 6.0, 0.5))),
    }
    ours, theirs = summarise(results, 0.9)
    assert ours["median_step_ms"] == 2000.0 and ours["train_min"] == pytest.approx(0.1)
    assert ours["min_to_target"] == pytest.approx(0.1) and theirs["min_to_target"] is None
    assert ours["test_1shot"] == pytest.approx(0.8) and "test_1shot_minus_metatl" not in ours
    assert theirs["test_1shot_minus_metatl"] == pytest.approx(-0.1)  # (-0.2 + 0 - 0.1) / 3
    assert theirs["test_1shot_paired_ci95"] > 0


def test_quick_run_through_the_harness(tmp_path: Path) -> None:
    out = tmp_path / "harness.json"
    work = ["--work-dir", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--rows", "time_to_accuracy", *work],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| library | median step | training | to 90% val |" in done.stdout
    rows = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == ({"metatl", "learn2learn"} if HAS_L2L else {"metatl"})
    ours = rows["metatl"]
    assert ours["row"] == "time_to_accuracy" and ours["steps"] == 30
    assert ours["ratio_to_metatl"] == 1.0 and ours["median_ms"] > 0
    assert 0.4 < ours["best_val"] <= 1  # 5 unseen blob classes, 5-way: chance is 20%
    assert 0.4 < ours["test_1shot"] <= 1 and 0.4 < ours["test_5shot"] <= 1
    run_dirs = list((tmp_path / "work" / "time_to_accuracy" / "metatl").glob("*/best.pt"))
    assert len(run_dirs) == 1  # metatl's run stays, for metatl.evaluate
    if HAS_L2L:
        # Same initial weights, episodes and meta-gradients (the harness's MAML rows find
        # them equal to the last bit): the same best weights, so the same test episodes right.
        theirs = rows["learn2learn"]
        assert theirs["test_1shot_minus_metatl"] == 0.0 and theirs["test_5shot_minus_metatl"] == 0.0
        assert theirs["best_val"] == ours["best_val"]
