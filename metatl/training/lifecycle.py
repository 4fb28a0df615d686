"""How every training run starts, the same for meta-training and pretraining.

:func:`check_run` does everything that can fail before a run directory exists (a resumed
run's lock and checkpoint, ``out_dir``, the device, every split of the data and, on resume,
that it is the data the run trained on); :func:`open_run` then creates and locks the run
directory, starts the tracker and stores the config. Both enter what they hold (locks,
tracker) into the caller's :class:`contextlib.ExitStack`, so it is all
released, in reverse order, when the run ends however it ends.

Under torchrun every rank checks the run (reading the data and a resumed run's checkpoint)
and joins the process group in :func:`check_run`; rank 0 alone creates, locks and writes the
run directory and tracks the run, and the others learn its path from rank 0.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from episodes import LabelledImages
from metatl.atomic_io import write_text_atomic
from metatl.config import RunConfig, config_to_dict
from metatl.tracking import MultiTracker, Tracker, create_tracker
from metatl.training.data import load_splits
from metatl.training.device import resolve_device
from metatl.training.distributed import (
    broadcast_object,
    current_ranks,
    launched_ranks,
    process_group,
    rank_device,
)
from metatl.training.preemption import Preempted, StopRequest
from metatl.training.run_dir import (
    check_data_fingerprint,
    check_out_dir,
    lock_run_dir,
    new_run_dir,
    with_absolute_paths,
    with_data_root,
)

__all__ = ["OpenRun", "RunStart", "check_run", "open_run", "start_tracker"]

ResumeReader = Callable[[Path], tuple[dict[str, Any], RunConfig]]
"""``run_dir -> (last.pt payload, the run's config)``, refusing checkpoints of another kind."""


@dataclass(frozen=True)
class RunStart:
    """A run checked and ready to start, before its directory is created or written.

    Attributes:
        config: The run's config (a resumed run's own), with absolute data paths.
        splits: ``train``, ``val`` and ``test`` in memory.
        device: Where it runs.
        resume: The ``last.pt`` payload to continue from, or None for a new run.
        resume_dir: The resumed run's directory (locked), or None.
    """

    config: RunConfig
    splits: dict[str, LabelledImages]
    device: torch.device
    resume: dict[str, Any] | None = None
    resume_dir: Path | None = None


def check_run(
    hold: contextlib.ExitStack,
    config: RunConfig,
    *,
    resume_dir: str | Path | None,
    data_root: str | None,
    read_resume: ResumeReader,
) -> RunStart:
    """Everything that can be checked before a run directory exists; seeds torch; joins the
    process group of a run started by torchrun (left when ``hold`` closes).

    Raises:
        RunInUseError: Another process writes to ``resume_dir`` (its lock is held in ``hold``).
        CheckpointError: ``resume_dir`` cannot be resumed, or its data changed.
        ConfigError: ``out_dir`` cannot hold a run; no such device.
        FileNotFoundError: The data is not there.
    """
    resume, run_dir = None, None
    launched = launched_ranks()
    if resume_dir is not None:
        run_dir = Path(resume_dir)
        if run_dir.is_dir() and launched.is_main:
            hold.enter_context(lock_run_dir(run_dir))
        resume, config = read_resume(run_dir)
    config = with_data_root(config, data_root)
    if resume is None:
        check_out_dir(config)
    device = rank_device(resolve_device(config.device), launched)
    hold.enter_context(process_group(device))
    torch.manual_seed(config.seed)
    splits = load_splits(config.data)
    config = with_absolute_paths(config)
    if resume is not None:
        check_data_fingerprint(resume.get("data"), splits, config.data.root)
    return RunStart(config, splits, device, resume, run_dir)


@dataclass(frozen=True)
class OpenRun:
    """A run directory being written: its tracker and the stop request of its process.

    Attributes:
        run_dir: The (locked) run directory.
        tracker: Where metrics go.
        stop: Set by SIGTERM/SIGINT.
        resume_command: The command that continues it, e.g. ``python -m metatl.train``.
    """

    run_dir: Path
    tracker: Tracker
    stop: StopRequest
    resume_command: str

    @property
    def resume_hint(self) -> str:
        return f"{self.resume_command} --resume {self.run_dir}"

    def preempted(self, step: int, signal_name: str | None = None) -> Preempted:
        """The exception that ends the run after ``last.pt`` holds ``step``."""
        name = signal_name or self.stop.signal_name or "a stop request"
        return Preempted(name, step, self.run_dir / "last.pt", self.resume_hint)


def open_run(
    hold: contextlib.ExitStack,
    start: RunStart,
    resume_command: str,
    stop: StopRequest | None = None,
    prefix: str | None = None,
) -> OpenRun:
    """The run directory (new, or the resumed one), locked, and its tracker. A new run's
    ``config.yaml`` is written and its config logged.

    Args:
        hold: Receives the lock and the tracker's close.
        start: What :func:`check_run` returned.
        resume_command: The command that resumes such a run, for messages.
        stop: The caller's stop request (an entrypoint's, set by SIGTERM/SIGINT); None:
            one that never fires.
        prefix: Start of a new run directory's automatic name (see :func:`new_run_dir`).
    """
    config, resume = start.config, start.resume
    ranks = current_ranks()
    if start.resume_dir is None:
        run_dir = new_run_dir(config, prefix) if ranks.is_main else None
        run_dir = broadcast_object(run_dir, ranks)
        if ranks.is_main:
            hold.enter_context(lock_run_dir(run_dir))
    else:
        run_dir = start.resume_dir
    if not ranks.is_main:  # rank 0 writes and tracks the run
        stop = stop if stop is not None else StopRequest()
        return OpenRun(run_dir, MultiTracker(()), stop, resume_command)
    tracker = start_tracker(config, run_dir, resume=resume is not None)
    hold.callback(tracker.close)
    if resume is None:
        text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
        write_text_atomic(run_dir / "config.yaml", text)
        tracker.log_config(config_to_dict(config))
    else:
        tracker.log({"resumed_from_step": resume["step"]}, resume["step"])
    return OpenRun(run_dir, tracker, stop if stop is not None else StopRequest(), resume_command)


def start_tracker(config: RunConfig, run_dir: Path, *, resume: bool) -> Tracker:
    """The run's tracker. If it cannot start (W&B refused), a new run directory is removed
    again, except W&B's own logs of the attempt, which W&B points the user to.

    Raises:
        ValueError: W&B could not start; the message says where its logs are, if any.
    """
    try:
        return create_tracker(config, run_dir, resume=resume)
    except ValueError as err:
        if resume:
            raise
        wandb_logs = run_dir / "wandb"
        if not wandb_logs.is_dir():
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        for entry in run_dir.iterdir():
            if entry != wandb_logs:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        raise ValueError(
            f"{err}. W&B's logs of the attempt are kept in {wandb_logs} (no run was started; "
            f"delete {run_dir} when done)"
        ) from err
    except BaseException:
        if not resume:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
