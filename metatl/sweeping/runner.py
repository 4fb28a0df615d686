"""Starting a trial: a subprocess running the spec's command, as a W&B agent would run it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["Launcher", "TrialLaunch", "TrialProcess", "last_error_line", "launch_subprocess"]


@dataclass(frozen=True)
class TrialLaunch:
    """What a launcher gets to start one trial.

    Attributes:
        name: The trial's name (``trial-001``).
        command: The argv, macros expanded.
        params: The trial's parameters (dotted key -> value).
        run_dir: The run directory the trial will create.
        log: The file for its stdout and stderr.
        env: Extra environment variables.
    """

    name: str
    command: list[str]
    params: Mapping[str, Any]
    run_dir: Path
    log: Path
    env: Mapping[str, str] = field(default_factory=dict)


class TrialProcess(Protocol):
    """A started trial; :class:`subprocess.Popen` is one."""

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM): a run checkpoints and exits with 75."""

    def kill(self) -> None:
        """Stop it at once (SIGKILL)."""


Launcher = Callable[[TrialLaunch], TrialProcess]


def launch_subprocess(launch: TrialLaunch) -> subprocess.Popen[bytes]:
    """Run the trial's command with stdout and stderr going to its log file.

    The trial gets its own session, so a Ctrl-C in the sweep's terminal reaches only the
    sweep, which then stops the trial with one SIGTERM (two would skip its checkpoint).
    """
    launch.log.parent.mkdir(parents=True, exist_ok=True)
    with launch.log.open("ab") as log:
        return subprocess.Popen(
            launch.command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **launch.env},
            start_new_session=True,
        )


def last_error_line(log: str | Path, limit: int = 300) -> str:
    """Why a trial failed, from its log: the last ``error: ...`` line (the train CLI's
    one-line errors), else the last line (a traceback's exception)."""
    path = Path(log)
    if not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 20_000))
        tail = f.read().decode("utf-8", errors="replace")
    lines = [line.strip() for line in tail.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    line = (errors or lines or [""])[-1]
    return line if len(line) <= limit else line[: limit - 3] + "..."
