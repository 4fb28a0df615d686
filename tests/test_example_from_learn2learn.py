"""examples/from_learn2learn.py in its quick mode: the metatl half always, learn2learn's where
it is installed (the repo's venv has no learn2learn: there its half says it is skipped)."""

from __future__ import annotations

import importlib.util
import re

import pytest

from tests.conftest import run_example

HAS_L2L = importlib.util.find_spec("learn2learn") is not None


@pytest.fixture(scope="module")
def stdout() -> str:
    return run_example("from_learn2learn.py", "--quick")


def results(stdout: str) -> dict[str, dict[str, float]]:
    """Name -> accuracy (%), its CI, test episodes, median step (ms) and steps."""
    found: dict[str, dict[str, float]] = {}
    pattern = r"^(\S+): 5-way 1-shot test accuracy ([\d.]+) ± ([\d.]+) % over (\d+)$"
    for name, mean, ci95, episodes in re.findall(pattern, stdout, re.M):
        found.setdefault(name, {}).update(accuracy=float(mean), ci95=float(ci95))
        found[name]["episodes"] = int(episodes)
    for name, ms, steps in re.findall(
        r"^(\S+): median step ([\d.]+) ms over (\d+) steps$", stdout, re.M
    ):
        found.setdefault(name, {}).update(step_ms=float(ms), steps=int(steps))
    return found


def test_the_metatl_half_learns_and_times_its_steps(stdout: str) -> None:
    metatl = results(stdout)["metatl"]
    assert metatl["episodes"] == 50 and metatl["steps"] == 20, stdout
    assert metatl["accuracy"] > 50  # 10 unseen blob classes, 5-way: chance is 20%
    assert 0 < metatl["ci95"] < 20
    assert metatl["step_ms"] > 0


def test_the_learn2learn_half_runs_where_it_is_installed_and_says_so_where_not(
    stdout: str,
) -> None:
    found = results(stdout)
    if not HAS_L2L:  # the repository's environment: its half is skipped, with a clear line
        assert "learn2learn not installed: skipping its half" in stdout.splitlines()
        assert list(found) == ["metatl"]
        return
    theirs, ours = found["learn2learn"], found["metatl"]
    assert theirs["episodes"] == ours["episodes"] and theirs["steps"] == ours["steps"]
    assert theirs["step_ms"] > 0
    difference = re.search(r"^learn2learn - metatl \(paired\): ([+-][\d.]+) ±", stdout, re.M)
    assert difference is not None, stdout
    assert abs(float(difference.group(1))) < 5  # the same recipe: the same accuracy
