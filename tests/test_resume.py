"""Exact resume, preemption by signal, corrupt checkpoints and non-finite losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metatl import train as train_cli
from metatl.algorithms import ProtoNet
from metatl.config import load_config
from metatl.tracking import read_jsonl
from metatl.training import CheckpointError, NonFiniteLossError, load_checkpoint, run_experiment
from metatl.training.preemption import EXIT_PREEMPTED, Preempted
from tests.conftest import stoppable

REPO = Path(__file__).parents[1]


def tiny(folder_dataset: Path, out_dir: Path, name: str, *extra: str) -> list[str]:
    return [
        "data.dataset=image_folder",
        f"data.root={folder_dataset}",
        f"out_dir={out_dir}",
        f"name={name}",
        "train.steps=12",
        "train.val_every=4",
        "train.val_episodes=10",
        "train.log_every=2",
        "episodes.way=5",
        "episodes.shot=2",
        "episodes.query=3",
        "train.meta_batch=2",
        "test.episodes=10",
        "test.shots=[1]",
        "optim.lr=0.003",
        "optim.lr_decay_every=5",  # the scheduler's state must survive the resume too
        *extra,
    ]


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def wait_for_step(proc: subprocess.Popen, log: Path, step: int) -> None:
    """Until the training process ``proc`` has logged ``step`` to ``log`` (2 min at most)."""
    deadline = time.monotonic() + 120
    while not (log.exists() and f'"step": {step},' in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)


def stop_at_step(monkeypatch: pytest.MonkeyPatch, step: int, meta_batch: int = 2) -> None:
    """SIGTERM this process during the ``step``-th meta-training step, as a scheduler would."""
    calls = {"n": 0}
    original = ProtoNet.loss

    def loss(self, episode):
        calls["n"] += 1
        if calls["n"] == (step - 1) * meta_batch + 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, episode)

    monkeypatch.setattr(ProtoNet, "loss", loss)


def test_interrupted_and_resumed_equals_uninterrupted(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = run_experiment(load_config(None, tiny(folder_dataset, tmp_path, "whole")))

    stop_at_step(monkeypatch, 6)  # not a validation step: the RNG and episode position matter
    with pytest.raises(Preempted, match=r"SIGTERM after step 6.*--resume"):
        stoppable(run_experiment, load_config(None, tiny(folder_dataset, tmp_path, "cut")))
    monkeypatch.undo()
    cut = tmp_path / "cut"
    assert load_checkpoint(cut / "last.pt")["step"] == 6
    time_before_the_stop = load_checkpoint(cut / "last.pt")["train_time_s"]
    assert not (cut / "results.json").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are put back

    resumed = run_experiment(load_config(), resume_dir=cut)
    assert resumed.run_dir == cut
    final, reference = load_checkpoint(cut / "last.pt"), load_checkpoint(whole.run_dir / "last.pt")
    assert final["step"] == reference["step"] == 12
    assert_same_tensors(final["model"], reference["model"])
    assert_same_tensors(
        load_checkpoint(cut / "best.pt")["model"], load_checkpoint(whole.run_dir)["model"]
    )
    assert final["scheduler"] == reference["scheduler"]
    for group_a, group_b in zip(
        final["optimizer"]["state"].values(), reference["optimizer"]["state"].values(), strict=True
    ):
        assert_same_tensors(group_a, group_b)
    assert resumed.best_val == whole.best_val
    # The reported training time is the whole run's, not just the resumed part's.
    total = json.loads((cut / "results.json").read_text())["train_time_s"]
    assert total > time_before_the_stop > 0
    assert resumed.test["5-way 1-shot"]["protonet"].accuracies == (
        whole.test["5-way 1-shot"]["protonet"].accuracies
    )
    records = read_jsonl(cut / "metrics.jsonl")
    assert [r["step"] for r in records if "resumed_from_step" in r] == [6]
    assert [r["step"] for r in records if "val/accuracy" in r] == [4, 8, 12]


def test_kill_term_mid_run_then_resume_is_bit_identical(
    folder_dataset: Path, tmp_path: Path
) -> None:
    """The real thing: ``kill -TERM`` a ``python -m metatl.train`` process, then ``--resume``."""
    args = tiny(folder_dataset, tmp_path, "run", "train.steps=120", "train.val_every=50")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "metatl.train", *args]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    wait_for_step(proc, tmp_path / "run" / "metrics.jsonl", 20)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, stderr
    stopped_at = load_checkpoint(tmp_path / "run" / "last.pt")["step"]
    assert 20 <= stopped_at < 120
    assert f"after step {stopped_at}" in stderr and "--resume" in stderr

    resume = [sys.executable, "-m", "metatl.train", "--resume", str(tmp_path / "run")]
    subprocess.run(resume, cwd=REPO, env=env, check=True, capture_output=True)
    uninterrupted = [*command, "name=whole"]
    subprocess.run(uninterrupted, cwd=REPO, env=env, check=True, capture_output=True)
    assert_same_tensors(
        load_checkpoint(tmp_path / "run" / "last.pt")["model"],
        load_checkpoint(tmp_path / "whole" / "last.pt")["model"],
    )
    results = [json.loads((tmp_path / n / "results.json").read_text()) for n in ("run", "whole")]
    assert results[0]["test"] == results[1]["test"]


def test_resume_refuses_corrupt_missing_and_finished(
    folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train_cli.main(tiny(folder_dataset, tmp_path, "run", "train.steps=4")) == 0
    assert train_cli.main(["--resume", str(run)]) == 2
    assert "has finished (results.json exists)" in capsys.readouterr().err

    (run / "results.json").unlink()
    intact = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(intact[: len(intact) // 2])  # a truncated copy
    assert train_cli.main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and "is truncated or corrupt" in err
    assert len(err.strip().splitlines()) == 1
    assert (run / "last.pt").read_bytes() == intact[: len(intact) // 2]  # left as it was

    (run / "last.pt").unlink()
    assert train_cli.main(["--resume", str(run)]) == 2
    assert "last.pt does not exist" in capsys.readouterr().err
    assert train_cli.main(["--resume", str(run), "optim.lr=0.1"]) == 2
    assert "drop --config and the overrides" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="no such run directory"):
        run_experiment(load_config(), resume_dir=tmp_path / "nowhere")


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original, calls = ProtoNet.loss, {"n": 0}

    def loss(self, episode):
        calls["n"] += 1
        value, metrics = original(self, episode)
        if calls["n"] == 2 * 6:  # the second episode of step 6
            return value * float("nan"), {**metrics, "loss": float("nan")}
        return value, metrics

    monkeypatch.setattr(ProtoNet, "loss", loss)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 6.*last.pt \(step 4\)"):
        run_experiment(load_config(None, tiny(folder_dataset, tmp_path, "nan")))
    last = load_checkpoint(tmp_path / "nan" / "last.pt")
    assert last["step"] == 4
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())


def test_a_second_signal_exits_at_once_and_leaves_checkpoints_readable(
    folder_dataset: Path, tmp_path: Path
) -> None:
    args = tiny(folder_dataset, tmp_path, "run", "train.steps=100000", "train.val_every=100000")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "metatl.train", *args, "train.checkpoint_every=1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(proc, tmp_path / "run" / "metrics.jsonl", 10)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    # Killed by the second signal, or (if the first was already handled) stopped cleanly.
    assert proc.returncode in (-signal.SIGINT, EXIT_PREEMPTED)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] >= 10
