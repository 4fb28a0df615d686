"""A run directory's life under stress: locks, signals anywhere, data that moved, bad places.

Each test here failed before the hardening of issue 8 (the item is named in its docstring).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from metatl import pretrain as pretrain_cli
from metatl import train as train_cli
from metatl.algorithms import ProtoNet
from metatl.atomic_io import write_atomic
from metatl.config import load_config
from metatl.tracking import read_jsonl
from metatl.training import load_checkpoint, run_experiment, run_pretraining
from metatl.training.preemption import EXIT_PREEMPTED, Preempted
from metatl.training.run_dir import lock_run_dir
from tests.conftest import stoppable
from tests.test_pretrain import tiny as tiny_pretrain
from tests.test_resume import REPO, assert_same_tensors, tiny, wait_for_step


def quiet_env() -> dict[str, str]:
    """This test's environment (W&B disabled by conftest), with one OpenMP thread."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def start_training(args: list[str], **popen: object) -> subprocess.Popen:
    """``python -m metatl.train ARGS`` in the background; its stderr is piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "metatl.train", *args],
        cwd=REPO,
        env=quiet_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def signal_on_eval_call(monkeypatch: pytest.MonkeyPatch, call: int, skip: int = 0) -> None:
    """SIGTERM this process at the ``call``-th evaluation-mode ProtoNet forward, after
    ``skip`` of them (validation and test episodes run the learner in eval mode)."""
    calls = {"n": 0}
    forward = ProtoNet.forward

    def interrupted(self: ProtoNet, episode):
        if not self.training:
            calls["n"] += 1
            if calls["n"] == skip + call:
                os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, episode)

    monkeypatch.setattr(ProtoNet, "forward", interrupted)


# ---- item 6: a signal anywhere stops within one step or episode ----------------------------


def test_sigterm_during_the_final_test_stops_and_resume_redoes_only_the_test(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 6: the signal was ignored during the test (the run went on and exited 0)."""
    whole = run_experiment(load_config(None, tiny(folder_dataset, tmp_path, "whole")))
    # 3 validations of 10 episodes, then the test's 10 episodes: stop at the test's 4th.
    signal_on_eval_call(monkeypatch, call=4, skip=30)
    with pytest.raises(Preempted, match=r"SIGTERM after step 12.*--resume") as stopped:
        stoppable(run_experiment, load_config(None, tiny(folder_dataset, tmp_path, "cut")))
    assert stopped.value.checkpoint == tmp_path / "cut" / "last.pt"
    assert not (tmp_path / "cut" / "results.json").exists()
    monkeypatch.undo()

    resumed = run_experiment(load_config(), resume_dir=tmp_path / "cut")
    assert resumed.test["5-way 1-shot"]["protonet"].accuracies == (
        whole.test["5-way 1-shot"]["protonet"].accuracies
    )
    records = read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in records if "val/accuracy" in r] == [4, 8, 12]  # not redone


def test_sigterm_during_validation_resumes_bit_identical(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 6: validation ran to its end before the stop; now it stops within an episode,
    and the resumed run redoes that validation first."""
    whole = run_experiment(load_config(None, tiny(folder_dataset, tmp_path, "whole")))
    signal_on_eval_call(monkeypatch, call=3, skip=10)  # the 3rd episode of step 8's validation
    with pytest.raises(Preempted, match=r"SIGTERM after step 8"):
        stoppable(run_experiment, load_config(None, tiny(folder_dataset, tmp_path, "cut")))
    last = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (last["step"], last["val_pending"]) == (8, True)
    monkeypatch.undo()

    resumed = run_experiment(load_config(), resume_dir=tmp_path / "cut")
    final, reference = (
        load_checkpoint(tmp_path / "cut" / "last.pt"),
        load_checkpoint(whole.run_dir / "last.pt"),
    )
    assert_same_tensors(final["model"], reference["model"])
    assert_same_tensors(
        load_checkpoint(tmp_path / "cut")["model"], load_checkpoint(whole.run_dir)["model"]
    )
    assert resumed.best_val == whole.best_val
    records = read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in records if "val/accuracy" in r] == [4, 8, 12]


@pytest.mark.parametrize("where", ["validation", "test"])
def test_sigterm_during_pretraining_validation_or_test(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Item 6, pretraining: validation (after each of 3 epochs) and the test stop too."""
    whole = run_pretraining(load_config(None, tiny_pretrain(folder_dataset, tmp_path, "whole")))
    skip = 10 if where == "validation" else 30  # 10 validation episodes per epoch
    signal_on_eval_call(monkeypatch, call=2, skip=skip)
    with pytest.raises(Preempted, match="pretrain --resume"):
        stoppable(
            run_pretraining, load_config(None, tiny_pretrain(folder_dataset, tmp_path, "cut"))
        )
    last = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert last["val_pending"] == (where == "validation")
    monkeypatch.undo()

    resumed = run_pretraining(load_config(), resume_dir=tmp_path / "cut")
    assert_same_tensors(
        load_checkpoint(tmp_path / "cut")["model"], load_checkpoint(whole.run_dir)["model"]
    )
    assert resumed.best_val == whole.best_val
    assert resumed.test["5-way 1-shot"]["protonet"].accuracies == (
        whole.test["5-way 1-shot"]["protonet"].accuracies
    )


def test_kill_term_during_the_test_exits_within_seconds(
    folder_dataset: Path, tmp_path: Path
) -> None:
    """Item 6, the real thing: a long test is stopped by ``kill -TERM`` at once, exit 75."""
    args = tiny(folder_dataset, tmp_path, "run", "train.steps=4", "test.episodes=100000")
    proc = start_training(args)
    last = tmp_path / "run" / "last.pt"
    deadline = time.monotonic() + 120
    while not (last.exists() and load_checkpoint(last)["step"] == 4):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.1)
    time.sleep(2)  # well into the 100,000 test episodes
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_PREEMPTED, stderr
    assert time.monotonic() - sent < 10
    assert "after step 4" in stderr and "--resume" in stderr
    assert not (tmp_path / "run" / "results.json").exists()


# ---- item 5: one writer per run directory ---------------------------------------------------


def test_a_second_resume_of_a_run_in_use_is_refused_naming_the_pid(
    folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 5: two ``--resume`` of one run both ran, duplicating steps in the log."""
    args = tiny(folder_dataset, tmp_path, "run", "train.steps=100000", "train.val_every=100000")
    proc = start_training(args)
    try:
        wait_for_step(proc, tmp_path / "run" / "metrics.jsonl", 4)
        log_before = (tmp_path / "run" / "metrics.jsonl").read_text()
        assert train_cli.main(["--resume", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert f"is in use by process {proc.pid}" in err
        assert len(err.strip().splitlines()) == 1
        assert (tmp_path / "run" / "metrics.jsonl").read_text().startswith(log_before)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    # A killed holder leaves no stale lock behind.
    with lock_run_dir(tmp_path / "run"):
        pass


def test_the_lock_is_exclusive_across_open_files(tmp_path: Path) -> None:
    with (
        lock_run_dir(tmp_path),
        pytest.raises(ValueError, match=f"process {os.getpid()}"),
        lock_run_dir(tmp_path),
    ):
        pass


# ---- item 7: checked before anything is written ---------------------------------------------


def test_an_out_dir_that_is_a_file_fails_before_training(
    folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 7: an ``out_dir`` that is a file failed only when the run directory was made."""
    blocker = tmp_path / "runs"
    blocker.write_text("not a directory\n")
    assert train_cli.main(tiny(folder_dataset, blocker, "x")) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: out_dir={str(blocker)!r}: {blocker} is a file, not a directory"
    )
    assert blocker.read_text() == "not a directory\n"
    assert pretrain_cli.main(tiny_pretrain(folder_dataset, blocker / "sub", "x")) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_a_colour_image_in_the_test_split_only_fails_before_training(
    folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 7: the test split alone turned colour; the run failed after training."""
    data = tmp_path / "data"
    shutil.copytree(folder_dataset, data)
    stray = sorted((data / "test").glob("*/*.png"))[5]
    Image.new("RGB", (28, 28), (200, 30, 30)).save(stray)
    out = tmp_path / "runs"
    args = tiny(data, out, "x")
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "the test split" in err and str(stray) in err
    assert not out.exists()


# ---- item 12: data that moved, runs from another directory -----------------------------------


def test_a_run_resumes_from_another_directory_and_with_moved_data(
    folder_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Item 12: the run stored the relative ``data.root`` and ``--resume`` refused every
    override, so a run could not follow its data or be resumed from elsewhere."""
    work = tmp_path / "work"
    shutil.copytree(folder_dataset, work / "data" / "patterns")
    monkeypatch.chdir(work)
    args = tiny(Path("data/patterns"), Path("runs"), "run", "train.steps=6")
    with (
        pytest.raises(Preempted),
        monkeypatch.context() as patch,
    ):
        signal_on_eval_call(patch, call=2)  # during the first validation (step 4)
        stoppable(run_experiment, load_config(None, args))
    run = work / "runs" / "run"
    stored = load_checkpoint(run / "last.pt")["config"]["data"]["root"]
    assert stored == str(work / "data" / "patterns")

    monkeypatch.chdir(tmp_path)
    shutil.move(work / "data", tmp_path / "moved")
    assert train_cli.main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert str(work / "data" / "patterns") in err and "--data-root" in err
    assert train_cli.main(["--resume", str(run), "--data-root", "moved/patterns"]) == 0
    assert (run / "results.json").exists()
    config = json.loads((run / "results.json").read_text())["config"]
    assert config["data"]["root"] == str(tmp_path / "moved" / "patterns")


def test_resume_refuses_other_data(
    folder_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Item 12: ``--data-root`` may follow data that moved, never swap it for other data."""
    other = tmp_path / "other"
    shutil.copytree(folder_dataset, other)
    shutil.rmtree(sorted((other / "train").iterdir())[0])  # one train class fewer
    signal_on_eval_call(monkeypatch, call=2)
    with pytest.raises(Preempted):
        stoppable(run_experiment, load_config(None, tiny(folder_dataset, tmp_path, "run")))
    monkeypatch.undo()
    intact = (tmp_path / "run" / "last.pt").read_bytes()
    assert train_cli.main(["--resume", str(tmp_path / "run"), "--data-root", str(other)]) == 2
    err = capsys.readouterr().err
    assert "is not the data this run was trained on" in err and "classes 24 -> 23" in err
    assert (tmp_path / "run" / "last.pt").read_bytes() == intact


# ---- item 13: second signal, workers, W&B failure --------------------------------------------


def test_a_second_signal_during_a_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    """Item 13: a second signal during a checkpoint write left an empty ``.last.pt.*.tmp``."""
    script = f"""
import time
from metatl.atomic_io import write_atomic
from metatl.training.preemption import stop_on_signals

def slow(f):
    f.write(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(60)

with stop_on_signals():
    write_atomic({str(tmp_path / "last.pt")!r}, slow)
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, env=quiet_env(), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_with_workers_warns_once(folder_dataset: Path, tmp_path: Path) -> None:
    """Item 13: with ``data.workers=2`` each worker printed the warning too (3 times)."""
    args = tiny(folder_dataset, tmp_path, "run", "train.steps=100000", "train.val_every=100000")
    # In a process group of its own, as a terminal's foreground job.
    proc = start_training([*args, "data.workers=2"], start_new_session=True)
    wait_for_step(proc, tmp_path / "run" / "metrics.jsonl", 4)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, stderr
    assert stderr.count("SIGINT received") == 1, stderr


def test_a_failed_wandb_start_keeps_the_logs_it_points_to(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 13: W&B printed "Find logs at <run>/wandb/..." and metatl then deleted <run>."""
    import wandb

    def refuse(**kwargs: object) -> None:
        logs = Path(kwargs["dir"]) / "wandb" / "run-x" / "logs"
        logs.mkdir(parents=True)
        (logs / "debug.log").write_text("refused\n")
        raise wandb.errors.CommError("could not reach the server")

    monkeypatch.setattr(wandb, "init", refuse)
    args = tiny(folder_dataset, tmp_path, "run", "tracking.wandb.mode=offline")
    with pytest.raises(ValueError, match="could not reach the server") as err:
        run_experiment(load_config(None, args))
    assert f"logs of the attempt are kept in {tmp_path / 'run' / 'wandb'}" in str(err.value)
    assert (tmp_path / "run" / "wandb" / "run-x" / "logs" / "debug.log").exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["wandb"]


# ---- item 14: a log file is not a terminal ---------------------------------------------------


def test_off_a_terminal_progress_is_plain_log_lines(
    folder_dataset: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Item 14: the bar wrote carriage-return updates into ``> run.log 2>&1``."""
    caplog.set_level(logging.INFO, logger="metatl.progress")
    run_experiment(load_config(None, tiny(folder_dataset, tmp_path, "run")))
    lines = [r.getMessage() for r in caplog.records if r.name == "metatl.progress"]
    assert len(lines) == 6  # train.log_every=2 over 12 steps
    assert lines[0].startswith("meta-train step 2/12: loss ")
    assert "\r" not in capfd.readouterr().err


def test_write_atomic_leaves_nothing_when_the_writer_fails(tmp_path: Path) -> None:
    def fail(f: object) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "x.pt", fail)
    assert list(tmp_path.iterdir()) == []


# ---- the library is not the command line ----------------------------------------------------


def test_a_library_run_installs_no_signal_handler(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notebook calling run_experiment keeps its own SIGINT/SIGTERM handling; the
    entrypoints install theirs (issue 9, part 0)."""
    seen = []
    forward = ProtoNet.forward

    def spy(self: ProtoNet, episode):
        seen.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))
        return forward(self, episode)

    monkeypatch.setattr(ProtoNet, "forward", spy)
    run_experiment(load_config(None, tiny(folder_dataset, tmp_path, "run", "train.steps=2")))
    assert seen and set(seen) == {(signal.default_int_handler, signal.SIG_DFL)}
    assert not (tmp_path / "run" / "report.md").exists()  # reports are the entrypoints' too


def test_training_does_not_import_reports() -> None:
    code = "import sys, metatl.training; print('metatl.reports' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
