"""The state of a sweep: its trials, and ``sweep.json``, rewritten (atomically) on each change.

A trial's history is its run's ``metrics.jsonl`` read the way W&B sees a run: each
``metrics`` record is one ``wandb.log`` call, and the summary holds the last value of each key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metatl.atomic_io import write_text_atomic
from metatl.training.run_dir import new_directory

if TYPE_CHECKING:
    from metatl.sweeping.spec import SweepSpec

__all__ = [
    "TERMINAL_STATES",
    "SweepState",
    "Trial",
    "new_sweep_dir",
    "read_run",
]

# W&B run states (``sweeps.RunState``) that end a run.
TERMINAL_STATES = ("finished", "failed", "crashed", "killed")
STATE_FILE = "sweep.json"


@dataclass
class Trial:
    """One run of the sweep.

    Attributes:
        index: 1, 2, ... in the order the trials started.
        name: ``trial-001``, ...; also the run directory's name.
        params: The suggested parameters (dotted key -> value), fixed ones included.
        run_dir: The run directory the trial writes.
        log: The file with the trial's stdout and stderr.
        state: A W&B run state: pending, running, finished, failed, crashed or killed.
        command: The trial's argv.
        exit_code: The process's exit code (negative: killed by that signal).
        stopped: Whether the sweep stopped it (early termination, or the sweep interrupted).
        reason: Why it failed or was stopped.
        metric: The sweep metric's summary value, if the trial logged it.
        summary: Last logged value of every key.
        started, ended: Wall-clock times (seconds since the epoch).
    """

    index: int
    name: str
    params: dict[str, Any]
    run_dir: str
    log: str
    state: str = "pending"
    command: list[str] = field(default_factory=list)
    exit_code: int | None = None
    stopped: bool = False
    reason: str = ""
    metric: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    started: float | None = None
    ended: float | None = None

    @property
    def running(self) -> bool:
        return self.state in ("pending", "running")

    def refresh(self, metric: str | None) -> list[dict[str, Any]]:
        """Re-read the run's history; update :attr:`summary` and :attr:`metric`."""
        history, self.summary = read_run(self.run_dir)
        value = self.summary.get(metric) if metric else None
        self.metric = float(value) if _is_number(value) else None
        return history


@dataclass
class SweepState:
    """Everything about a sweep that ``--resume`` needs, saved as ``<dir>/sweep.json``.

    Attributes:
        name: The sweep's name (its directory's name); the W&B group of its trials.
        dir: The sweep directory.
        source: The spec file it was started from.
        spec: The spec as written.
        seed: Seed of the search's random draws.
        overrides: ``key=value`` overrides given to every trial besides the parameters.
        trials: Every trial so far, in order.
        ended: Why the last invocation stopped starting trials ("" while it runs).
    """

    name: str
    dir: str
    source: str
    spec: dict[str, Any]
    seed: int = 0
    overrides: list[str] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)
    ended: str = ""

    @property
    def path(self) -> Path:
        return Path(self.dir) / STATE_FILE

    @classmethod
    def create(
        cls,
        spec: SweepSpec,
        out_dir: str | Path,
        *,
        name: str | None = None,
        seed: int = 0,
        overrides: Sequence[str] = (),
    ) -> SweepState:
        """A new sweep in a new directory ``<out_dir>/<name>-<YYYYmmdd-HHMMSS>`` (name: the
        spec file's stem), saved at once."""
        stem = name or Path(spec.source).stem
        sweep_dir = new_sweep_dir(out_dir, stem)
        state = cls(sweep_dir.name, str(sweep_dir), spec.source, spec.config, seed, list(overrides))
        state.save()
        return state

    def save(self) -> Path:
        return write_text_atomic(
            self.path, json.dumps(dataclasses.asdict(self), indent=2, default=str) + "\n"
        )

    @classmethod
    def load(cls, sweep_dir: str | Path) -> SweepState:
        """The state saved in ``sweep_dir``.

        Raises:
            FileNotFoundError: ``sweep_dir`` has no ``sweep.json``.
            ValueError: The file is not a sweep state.
        """
        path = Path(sweep_dir) / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{sweep_dir} is not a sweep directory (no {STATE_FILE})")
        try:
            data = json.loads(path.read_text())
            trials = [Trial(**t) for t in data.pop("trials")]
            return cls(**data, trials=trials)
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"{path} is not a sweep state: {err}") from None


def new_sweep_dir(out_dir: str | Path, stem: str) -> Path:
    """A new directory ``<out_dir>/<stem>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``, ... if that
    exists); never an existing one."""
    return new_directory(Path(out_dir) / time.strftime(f"{stem}-%Y%m%d-%H%M%S"))


def read_run(run_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A run's history and summary from its ``metrics.jsonl`` (both empty before it exists).

    History rows are the ``metrics`` records (``kind`` and ``time`` dropped, ``step`` as
    ``_step``); the summary is the last value of each key, then the scalar values of
    ``summary`` records. A line still being written (no newline yet) waits for the next read.
    """
    path = Path(run_dir) / "metrics.jsonl"
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    logged: dict[str, Any] = {}
    if not path.is_file():
        return history, summary
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n") or not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("kind") == "metrics":
            row = {k: v for k, v in record.items() if k not in ("kind", "time", "step")}
            history.append({"_step": record.get("step"), **row})
            summary.update(row)
        elif record.get("kind") == "summary" and isinstance(record.get("summary"), dict):
            logged.update({k: v for k, v in record["summary"].items() if not isinstance(v, dict)})
    return history, summary | logged


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
