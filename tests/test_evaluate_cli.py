"""``python -m metatl.evaluate``: every evaluation ends in a directory with results.json,
report.md and plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from episodes import EpisodeSpec
from metatl import evaluate as evaluate_cli
from metatl.config import config_from_dict, config_to_dict, load_config
from metatl.reports import matplotlib_available
from metatl.training import build_learner, save_checkpoint
from tests.conftest import make_pattern_images, train_briefly

ARGS = ["--episodes", "4", "--methods", "protonet", "pixels"]


@pytest.fixture(scope="module")
def run_dir(folder_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Conv-4 ProtoNet trained for a few episodes, saved as a run's best.pt; tested on
    the ``folder_dataset`` test split at 1 and 2 shots."""
    config = load_config(
        None,
        [
            "data.dataset=image_folder",
            f"data.root={folder_dataset}",
            "test.query=3",
            "test.shots=[1,2]",
            "device=cpu",
        ],
    )
    torch.manual_seed(0)
    learner = build_learner(config, 1, 28)
    train_briefly(learner, make_pattern_images(n_classes=30, per_class=20), EpisodeSpec(5, 1, 3), 8)
    run = tmp_path_factory.mktemp("evaluate") / "run"
    save_checkpoint(
        run / "best.pt",
        {
            "model": learner.state_dict(),
            "config": config_to_dict(config),
            "step": 8,
            "val": {"accuracy": 0.5, "ci95": 0.1, "step": 8},
        },
    )
    return run


def test_evaluate_writes_results_report_and_plots(run_dir: Path, tmp_path: Path, capsys) -> None:
    summary_json = tmp_path / "summary.json"
    assert (
        evaluate_cli.main(["--checkpoint", str(run_dir), *ARGS, "--json", str(summary_json)]) == 0
    )
    out = capsys.readouterr().out
    [first] = (run_dir / "evaluations").iterdir()
    assert f"Report: {first / 'report.md'}" in out

    results = json.loads((first / "results.json").read_text())
    assert results["checkpoint"] == str(run_dir / "best.pt") and results["checkpoint_step"] == 8
    assert results["config"]["test"]["episodes"] == 4
    assert set(results["test"]) == {"5-way 1-shot", "5-way 2-shot"}
    assert json.loads(summary_json.read_text()) == results["test"]  # --json: the summaries
    assert [(p["setting"], p["a"], p["b"]) for p in results["paired"]] == [
        ("5-way 1-shot", "protonet", "pixels"),
        ("5-way 2-shot", "protonet", "pixels"),
    ]
    # The paired differences are the ones printed (computed from the per-episode results).
    for pair in results["paired"]:
        assert f"{100 * pair['difference']:+.2f} ± {100 * pair['ci95']:.2f}" in out

    report = (first / "report.md").read_text()
    assert report.startswith(f"# Evaluation of `{run_dir / 'best.pt'}`")
    protonet = results["test"]["5-way 2-shot"]["protonet"]
    assert f"{100 * protonet['accuracy']:.2f} ± {100 * protonet['ci95']:.2f}" in report
    assert "| protonet − pixels | " in report
    expected = {"results.json", "report.md", "metrics.jsonl"}  # the evaluation's own log
    if matplotlib_available():
        expected |= {"methods.png", "accuracy_vs_shots.png"}
        assert "![methods](methods.png)" in report
    assert {p.name for p in first.iterdir()} == expected
    before = {p.name: p.read_bytes() for p in first.iterdir()}

    # A second evaluation gets a new directory; the first is left as it was.
    assert evaluate_cli.main(["--checkpoint", str(run_dir / "best.pt"), *ARGS]) == 0
    dirs = sorted((run_dir / "evaluations").iterdir())
    assert len(dirs) == 2 and first in dirs
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    [second] = [d for d in dirs if d != first]
    assert json.loads((second / "results.json").read_text())["test"] == results["test"]


def test_out_dir_is_never_reused(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    for _ in range(2):
        args = ["--checkpoint", str(run_dir), *ARGS, "--shot", "1", "--out-dir", str(out)]
        assert evaluate_cli.main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "eval-2"]
    assert f"Report: {out.with_name('eval-2') / 'report.md'}" in capsys.readouterr().out
    # One shot count: no accuracy-vs-shots plot.
    assert not (out / "accuracy_vs_shots.png").exists()


def test_evaluate_without_matplotlib(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    args = ["--checkpoint", str(run_dir), *ARGS, "--shot", "1", "--out-dir", str(tmp_path / "e")]
    assert evaluate_cli.main(args) == 0
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [
        "metrics.jsonl",
        "report.md",
        "results.json",
    ]


def test_failed_evaluation_leaves_no_directory(run_dir: Path, tmp_path: Path, capsys) -> None:
    args = ["--checkpoint", str(run_dir), "--methods", "knn", "--out-dir", str(tmp_path / "e")]
    assert evaluate_cli.main(args) == 2
    assert "unknown evaluation method 'knn'" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_several_checkpoints_are_compared_on_the_same_episodes(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = torch.load(run_dir / "best.pt", weights_only=True)
    untrained = tmp_path / "untrained"
    torch.manual_seed(1)
    fresh = build_learner(config_from_dict(checkpoint["config"]), 1, 28)
    save_checkpoint(untrained / "best.pt", {**checkpoint, "model": fresh.state_dict(), "step": 0})

    alone = tmp_path / "alone"
    assert evaluate_cli.main(["--checkpoint", str(run_dir), *ARGS, "--out-dir", str(alone)]) == 0
    both = tmp_path / "both"
    argv = ["--checkpoint", str(run_dir), str(untrained), *ARGS, "--out-dir", str(both)]
    assert evaluate_cli.main(argv) == 0
    out = capsys.readouterr().out
    single = json.loads((alone / "results.json").read_text())["test"]
    compared = json.loads((both / "results.json").read_text())
    for setting, rows in compared["test"].items():
        assert set(rows) == {"run/protonet", "untrained/protonet", "pixels"}
        assert rows["run/protonet"] == single[setting]["protonet"]  # the very same episodes
        assert rows["pixels"] == single[setting]["pixels"]
    assert compared["checkpoints"] == {
        "run": str(run_dir / "best.pt"),
        "untrained": str(untrained / "best.pt"),
    }
    pairs = {(p["a"], p["b"]) for p in compared["paired"]}
    assert ("run/protonet", "untrained/protonet") in pairs
    assert "| run/protonet − untrained/protonet |" in out

    elsewhere = tmp_path / "elsewhere"
    moved = {**checkpoint["config"], "data": {**checkpoint["config"]["data"], "root": "/x"}}
    save_checkpoint(elsewhere / "best.pt", {**checkpoint, "config": moved})
    assert evaluate_cli.main(["--checkpoint", str(run_dir), str(elsewhere), *ARGS]) == 2
    assert "was trained on other data" in capsys.readouterr().err
