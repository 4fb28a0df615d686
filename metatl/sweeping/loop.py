"""The sweep loop: W&B's engine suggests a trial, the trial runs, the loop watches its
metrics and stops it early when the engine says so; one trial at a time."""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metatl.config import load_config
from metatl.sweeping.command import expand_command, format_value
from metatl.sweeping.engine import plain, runs_to_stop, suggest, sweep_run
from metatl.sweeping.runner import (
    Launcher,
    TrialLaunch,
    TrialProcess,
    last_error_line,
    launch_subprocess,
)
from metatl.sweeping.spec import SweepSpec
from metatl.sweeping.state import TERMINAL_STATES, SweepState, Trial, read_run
from metatl.training.preemption import EXIT_PREEMPTED

__all__ = ["SweepController"]

logger = logging.getLogger(__name__)


class SweepController:
    """Runs the trials of a sweep and keeps ``state`` (and ``sweep.json``) up to date.

    Args:
        state: The sweep so far (empty for a new sweep).
        spec: Its checked spec.
        launcher: Starts a trial (default: a subprocess running the spec's command).
        poll: Seconds between looks at a running trial's metrics.
        kill_delay: Seconds a stopped trial gets to checkpoint before SIGKILL (W&B's
            agent waits 30).
        interpreter: What ``${interpreter}`` expands to.
        sleep, clock: Injected for tests.
    """

    def __init__(
        self,
        state: SweepState,
        spec: SweepSpec,
        *,
        launcher: Launcher = launch_subprocess,
        poll: float = 5.0,
        kill_delay: float = 30.0,
        interpreter: str = sys.executable,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state, self.spec = state, spec
        self.launcher, self.poll, self.kill_delay = launcher, poll, kill_delay
        self.interpreter, self.sleep, self.clock = interpreter, sleep, clock
        self._histories: dict[str, list[dict[str, Any]]] = {}

    @property
    def trials_dir(self) -> Path:
        return Path(self.state.dir) / "trials"

    def recover(self) -> None:
        """Mark trials left running by a sweep process that died as crashed (as W&B does
        when a run's heartbeat stops)."""
        for trial in self.state.trials:
            if trial.running:
                trial.refresh(self.spec.metric)
                trial.state, trial.reason = "crashed", "the sweep stopped while it ran"
        self.state.save()

    def run(self, count: int | None) -> str:
        """Start up to ``count`` more trials (None: until the search ends).

        Returns:
            Why it stopped starting trials (also saved as ``state.ended``).
        """
        started = 0
        reason = f"{count} trial(s) run"
        self.state.ended = ""
        while count is None or started < count:
            if self.spec.run_cap is not None and len(self.state.trials) >= self.spec.run_cap:
                reason = f"run_cap {self.spec.run_cap} reached"
                break
            if best := self._reached_target():
                reason = f"{best.name} reached the metric target {self.spec.target}"
                break
            params = self._suggest()
            if params is None:
                reason = f"the grid is exhausted after {len(self.state.trials)} trial(s)"
                break
            started += 1
            self._run_trial(params)
        self.state.ended = reason
        self.state.save()
        logger.info("sweep %s: %s", self.state.name, reason)
        return reason

    def _suggest(self) -> dict[str, Any] | None:
        index = len(self.state.trials) + 1
        run = suggest(self.spec.filled, self._sweep_runs(), seed=self.state.seed, index=index)
        if run is None:
            return None
        return {key: plain(value["value"]) for key, value in run.config.items()}

    def _run_trial(self, params: dict[str, Any]) -> None:
        index = len(self.state.trials) + 1
        name = f"trial-{index:03d}"
        trial = Trial(
            index=index,
            name=name,
            params=params,
            run_dir=str(self.trials_dir / name),
            log=str(self.trials_dir / f"{name}.log"),
        )
        self.state.trials.append(trial)
        arguments = {**params, **self._extras(trial)}
        shown = ", ".join(f"{k}={format_value(params[k])}" for k in self.spec.searched)
        logger.info("%s: %s", name, shown or "(fixed parameters only)")
        try:
            # What the trial's own config check would say, without starting a process.
            load_config(self.spec.preset, [f"{k}={format_value(v)}" for k, v in arguments.items()])
            trial.command = expand_command(
                self.spec.command,
                arguments,
                program=self.spec.program,
                interpreter=self.interpreter,
                args_json_file=self.trials_dir / f"{name}.args.json",
            )
        except ValueError as err:
            self._fail_before_start(trial, f"error: {err}")
            return
        launch = TrialLaunch(
            name,
            trial.command,
            params,
            Path(trial.run_dir),
            Path(trial.log),
            env={"PYTHONUNBUFFERED": "1"},
        )
        trial.state, trial.started = "running", time.time()
        self.state.save()
        try:
            process = self.launcher(launch)
        except OSError as err:
            self._fail_before_start(trial, f"cannot start {trial.command[0]}: {err}")
            return
        self._watch(trial, process)

    def _extras(self, trial: Trial) -> dict[str, str]:
        """Overrides every trial gets: its run directory and W&B group, then the user's."""
        extras = {"out_dir": str(self.trials_dir), "name": trial.name}
        user = dict(o.split("=", 1) for o in self.state.overrides)
        if "tracking.wandb.group" not in trial.params and "tracking.wandb.group" not in user:
            extras["tracking.wandb.group"] = self.state.name
        return extras | user

    def _fail_before_start(self, trial: Trial, reason: str) -> None:
        trial.state, trial.reason, trial.ended = "failed", reason, time.time()
        Path(trial.log).parent.mkdir(parents=True, exist_ok=True)
        Path(trial.log).write_text(reason + "\n")
        logger.warning("%s failed: %s", trial.name, reason)
        self.state.save()

    def _watch(self, trial: Trial, process: TrialProcess) -> None:
        stopped_at: float | None = None
        seen = -1
        try:
            while True:
                code = process.poll()
                history = trial.refresh(self.spec.metric)
                if code is not None:
                    self._finish(trial, code, history)
                    return
                if not trial.stopped:
                    why = runs_to_stop(self.spec.filled, self._sweep_runs(trial, history))
                    if trial.name in why:
                        logger.info("%s: early-terminated (%s)", trial.name, why[trial.name])
                        process.terminate()
                        trial.stopped, trial.reason = True, f"early-terminated: {why[trial.name]}"
                        stopped_at = self.clock()
                        seen = -1  # save now
                elif stopped_at is not None and self.clock() - stopped_at > self.kill_delay:
                    logger.warning(
                        "%s: still running %.0f s after SIGTERM; killing it",
                        trial.name,
                        self.kill_delay,
                    )
                    process.kill()
                    stopped_at = None
                if len(history) != seen:
                    seen = len(history)
                    self.state.save()
                self.sleep(self.poll)
        except KeyboardInterrupt:
            self._interrupt(trial, process)
            raise

    def _interrupt(self, trial: Trial, process: TrialProcess) -> None:
        """The sweep itself is stopping: give the trial one SIGTERM to checkpoint and exit."""
        if not trial.stopped:
            process.terminate()
            trial.stopped, trial.reason = True, "the sweep was interrupted"
        logger.warning("interrupted: waiting for %s to checkpoint and exit", trial.name)
        deadline = self.clock() + self.kill_delay
        code = process.poll()
        try:
            while code is None and self.clock() < deadline:
                self.sleep(0.2)
                code = process.poll()
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: kill it now
        if code is None:
            process.kill()
            code = -signal.SIGKILL
        self._finish(trial, code, trial.refresh(self.spec.metric))

    def _finish(self, trial: Trial, code: int, history: list[dict[str, Any]]) -> None:
        trial.exit_code, trial.ended = code, time.time()
        if code == 0:
            trial.state = "finished"
        elif trial.stopped:
            trial.state = "killed"
        elif code == EXIT_PREEMPTED:
            trial.state, trial.reason = "killed", "stopped by a signal from outside the sweep"
        elif code < 0:
            trial.state, trial.reason = "crashed", f"killed by {signal.Signals(-code).name}"
        else:
            trial.state = "failed"
            trial.reason = last_error_line(trial.log) or f"exit code {code}"
        self._histories[trial.name] = history
        seconds = trial.ended - (trial.started or trial.ended)
        metric = "" if trial.metric is None else f", {self.spec.metric}={trial.metric:.4f}"
        why = f": {trial.reason}" if trial.reason else ""
        logger.info("%s %s in %.0f s%s%s", trial.name, trial.state, seconds, metric, why)
        self.state.save()

    def _sweep_runs(
        self, current: Trial | None = None, history: list[dict[str, Any]] | None = None
    ) -> list[Any]:
        """Every trial as a ``sweeps.SweepRun`` (the running one with ``history``)."""
        runs = []
        for trial in self.state.trials:
            if trial is current:
                rows = history or []
            elif trial.state in TERMINAL_STATES:
                if trial.name not in self._histories:
                    self._histories[trial.name] = read_run(trial.run_dir)[0]
                rows = self._histories[trial.name]
            else:
                rows = []
            runs.append(sweep_run(trial.name, trial.params, trial.state, rows, trial.summary))
        return runs

    def _reached_target(self) -> Trial | None:
        target = self.spec.target
        if target is None:
            return None
        sign = 1 if self.spec.goal == "maximize" else -1
        for trial in self.state.trials:
            finished = trial.state == "finished" and trial.metric is not None
            if finished and sign * (trial.metric - target) >= 0:  # type: ignore[operator]
                return trial
        return None
