"""``python -m metatl.evaluate``: every evaluation ends in a directory with results.json,
report.md and plots."""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

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


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"bare {constant} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_one_episode_gives_null_and_na_not_zero(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog
) -> None:
    out, summary = tmp_path / "e", tmp_path / "summary.json"
    args = ["--checkpoint", str(run_dir), "--episodes", "1", "--methods", "protonet", "pixels"]
    with caplog.at_level(logging.WARNING, logger="metatl.evaluate"):
        assert evaluate_cli.main([*args, "--out-dir", str(out), "--json", str(summary)]) == 0
    printed = capsys.readouterr().out
    results = _strict_json((out / "results.json").read_text())
    assert [r["ci95"] for rows in results["test"].values() for r in rows.values()] == [None] * 4
    assert [p["ci95"] for p in results["paired"]] == [None, None]
    assert _strict_json(summary.read_text()) == results["test"]
    note = "Note: 1 episode per setting; below 30 the normal approximation"
    for text in (printed, (out / "report.md").read_text()):
        assert " ± n/a |" in text and "± 0.00" not in text and note in text
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and warned[0].startswith(note)


def test_architecture_overrides_are_refused_in_one_line(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = run_dir / "best.pt"
    base = ["--checkpoint", str(run_dir), *ARGS, "--out-dir", str(tmp_path / "e")]
    assert evaluate_cli.main([*base, "model.backbone=resnet12"]) == 2
    assert capsys.readouterr().err == (
        "error: model.backbone=resnet12 cannot change on a trained checkpoint: "
        f"{checkpoint} has model.backbone=conv4\n"
    )
    assert evaluate_cli.main([*base, "model.algorithm=maml", "--model.distance=cosine"]) == 2
    assert capsys.readouterr().err == (
        "error: model.algorithm=maml, model.distance=cosine cannot change on a trained "
        f"checkpoint: {checkpoint} has model.algorithm=protonet, model.distance=sqeuclidean "
        "(choose what to evaluate with --methods)\n"
    )
    assert evaluate_cli.main([*base, "model.backbone=conv4"]) == 0  # the same value: fine
    assert (tmp_path / "e").is_dir()


def test_weights_that_do_not_fit_fail_in_one_line(
    folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A MAML learned head's input is the Conv-4's output, whose size follows the image size.
    config = load_config(
        None,
        [
            "data.dataset=image_folder",
            f"data.root={folder_dataset}",
            "model.algorithm=maml",
            "model.maml.head=learned",
            "test.way=5",
            "train.val_way=5",
            "episodes.way=5",
            "device=cpu",
        ],
    )
    learner = build_learner(config, 1, 28, n_way=5)
    run = tmp_path / "run"
    save_checkpoint(
        run / "best.pt", {"model": learner.state_dict(), "config": config_to_dict(config)}
    )
    args = ["--checkpoint", str(run), "--episodes", "2", "--out-dir", str(tmp_path / "e")]
    assert evaluate_cli.main([*args, "data.image_size=32"]) == 2
    assert capsys.readouterr().err == (
        f"error: checkpoint {run / 'best.pt'} does not fit the model built with "
        "data.image_size=32: 1 tensor(s) of another shape (head.weight: [5, 64] in the "
        "checkpoint, [5, 256] in the model)\n"
    )
    state = {k: v for k, v in learner.state_dict().items() if k != "head.bias"}
    save_checkpoint(run / "best.pt", {"model": state, "config": config_to_dict(config)})
    assert evaluate_cli.main(args) == 2
    assert capsys.readouterr().err == (
        f"error: checkpoint {run / 'best.pt'} does not fit its model: 1 missing (head.bias)\n"
    )
    assert not (tmp_path / "e").exists()


def test_overrides_are_read_wherever_they_stand(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = ["--checkpoint", str(run_dir)]
    for i, argv in enumerate(
        (
            [*checkpoint, "test.way=3", "--shot", "1"],
            [*checkpoint, "--shot", "1", "test.way=3"],
            ["test.way=3", *checkpoint, "--shot", "1"],
            [*checkpoint, "--methods", "protonet", "test.way=3", "--shot", "1"],
        )
    ):
        summary = tmp_path / f"summary{i}.json"
        out = ["--out-dir", str(tmp_path / f"e{i}"), "--json", str(summary)]
        assert evaluate_cli.main([*argv, "--episodes", "2", *out]) == 0, capsys.readouterr().err
        assert list(json.loads(summary.read_text())) == ["3-way 1-shot"]

    overrides, rest = evaluate_cli.split_overrides(
        ["--json", "test=a.json", "seed=2", "--methods", "a", "runs/lr=0.1", "x=1", "--way=3"],
        ["--json", "--way"],
    )
    assert overrides == ["seed=2"]  # a RunConfig field, not the value of --json
    assert rest == ["--json", "test=a.json", "--methods", "a", "runs/lr=0.1", "x=1", "--way=3"]


def test_output_paths_are_checked_before_anything_is_loaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The checkpoint does not exist either: the output paths are what is checked first.
    missing = ["--checkpoint", str(tmp_path / "no-run")]
    a_file = tmp_path / "file"
    a_file.write_text("")
    for options, message in (
        (
            ["--json", "/missing/dir/x.json"],
            "--json /missing/dir/x.json: directory /missing/dir does not exist",
        ),
        (
            ["--json", str(a_file / "x.json")],
            f"--json {a_file / 'x.json'}: directory {a_file} is not a directory",
        ),
        (["--json", str(tmp_path)], f"--json {tmp_path} is a directory; give a file name"),
        (["--out-dir", str(a_file)], f"--out-dir {a_file} is a file, not a directory"),
        (
            ["--out-dir", str(a_file / "x")],
            f"--out-dir {a_file / 'x'}: {a_file} is a file, not a directory",
        ),
    ):
        assert evaluate_cli.main([*missing, *options]) == 2
        assert capsys.readouterr().err == f"error: {message}\n"
    assert evaluate_cli.main(missing) == 2
    assert capsys.readouterr().err == f"error: checkpoint {tmp_path / 'no-run'} does not exist\n"


def test_sigterm_stops_an_evaluation_and_leaves_nothing(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(run_dir / "best.pt", run / "best.pt")
    summary = tmp_path / "summary.json"
    argv = ["--checkpoint", str(run), "--episodes", "50000", "--methods", "protonet"]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "metatl.evaluate", *argv, "--json", str(summary)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stderr], daemon=True
    ).start()
    try:
        deadline, said = time.monotonic() + 120, []
        while not said or "evaluating" not in said[-1]:  # until it is evaluating
            try:
                said.append(lines.get(timeout=1.0))
            except queue.Empty:
                assert process.poll() is None, f"exited early: {''.join(said)}"
                assert time.monotonic() < deadline, "never started evaluating"
        time.sleep(1.0)  # well into the episodes
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert process.wait(timeout=20) == 75
        assert time.monotonic() - sent < 10
    finally:
        process.kill()
        process.wait()
    time.sleep(0.2)
    stderr = "".join(said) + "".join(lines.queue)
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in run.iterdir()) == ["best.pt"]  # no evaluations/
    assert not summary.exists()
