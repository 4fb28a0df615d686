"""One training loop for every kind of training; what a step is comes from a strategy.

Meta-training (a step is a meta-batch of episodes, :class:`EpisodicSteps`) and supervised
pretraining (a step is a batch of images, :class:`SupervisedSteps`) differ only in their
step. Everything around it is here, once: the log window and progress, validation on fixed
episodes with ``best.pt`` kept, ``last.pt`` for an exact resume (written at validations, at
the strategy's checkpoint points, at the end and on a stop), the stop on a non-finite loss
and the stop on SIGTERM/SIGINT (within one step or one validation episode). Under torchrun
every rank runs the loop; the ranks agree on each stop, and rank 0 alone writes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Protocol

from metatl.config import RunConfig, config_to_dict
from metatl.tracking import Tracker
from metatl.training.checkpoint import save_checkpoint
from metatl.training.distributed import any_rank, current_ranks, gather_objects
from metatl.training.evaluation import EvalResult
from metatl.training.preemption import Interrupted, Preempted, StopRequest
from metatl.training.progress import Progress
from metatl.training.rng import capture_rng_state, restore_rng_state

__all__ = ["NonFiniteLoss", "NonFiniteLossError", "StepStrategy", "TrainingLoop"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (the message names the step)."""


class NonFiniteLoss(Exception):  # noqa: N818 -- raised by a strategy, reworded by the loop
    """A strategy's loss was not finite; raised before any parameter was updated."""

    def __init__(self, value: float) -> None:
        super().__init__(f"loss is {value}")
        self.value = value


class StepStrategy(Protocol):
    """What one kind of training does in a step and what it keeps in its checkpoints.

    Steps are numbered from 1 to :attr:`total_steps`; step ``s`` is the ``s``-th optimiser
    step, so a strategy derives its position (episode index, epoch and batch) from ``s``.
    """

    label: str  # shown by the progress bar, e.g. "meta-train"
    resume_command: str  # e.g. "python -m metatl.train"
    lr_key: str  # the config key to lower after a non-finite loss
    rate_name: str  # the throughput metric, e.g. "episodes_per_s"
    items_per_step: int  # episodes or images in a step
    total_steps: int

    def train_step(self, step: int) -> dict[str, float]:
        """One optimiser step; ``{"loss", "accuracy", "lr"}``. Raises :class:`NonFiniteLoss`
        before any update."""
        ...

    def where(self, step: int) -> str:
        """Where step ``step`` is, for messages (``" (epoch 2, batch 3 of 7)"``), or ``""``."""
        ...

    def log_due(self, step: int) -> bool: ...

    def validation_due(self, step: int) -> bool: ...

    def checkpoint_due(self, step: int) -> bool:
        """Write ``last.pt`` after ``step`` (besides validations, the end and stops)."""
        ...

    def log_extras(self, step: int) -> dict[str, float]:
        """Metrics logged with each window (e.g. ``train/epoch``)."""
        ...

    def best_extras(self, step: int) -> dict[str, Any]:
        """Kept with the best validation and in ``best.pt`` (e.g. ``{"epoch": 2}``)."""
        ...

    def validate(self, stop: StopRequest | None) -> EvalResult:
        """Score the fixed validation episodes. Raises :class:`Interrupted` on a stop."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The strategy's part of ``last.pt`` (weights, optimiser, ...)."""
        ...

    def best_state(self) -> dict[str, Any]:
        """The strategy's part of ``best.pt`` (``{"model": ...}``, a ``kind``)."""
        ...

    def load_state_dict(self, payload: dict[str, Any], source: str) -> None:
        """Continue from a ``last.pt`` payload. Raises ``CheckpointError`` if it does not fit."""
        ...


class TrainingLoop:
    """Runs a :class:`StepStrategy` from its current step to the end in ``run_dir``.

    Args:
        steps: The strategy.
        config: The run config (stored in the checkpoints; ``train.val_*`` episodes).
        run_dir: Where ``best.pt`` and ``last.pt`` are written.
        tracker: Receives ``train/*`` and ``val/*`` metrics at optimiser steps.
        fingerprint: What identifies the data; stored in ``last.pt`` for resume's check.
    """

    def __init__(
        self,
        steps: StepStrategy,
        config: RunConfig,
        run_dir: Path,
        tracker: Tracker,
        fingerprint: dict[str, Any] | None = None,
    ) -> None:
        self.steps, self.config, self.tracker = steps, config, tracker
        self.run_dir = Path(run_dir)
        self.fingerprint = dict(fingerprint or {})
        self.step = 0
        self.best: dict[str, Any] = {"accuracy": -1.0, "ci95": 0.0, "step": 0}
        self.best |= steps.best_extras(0)
        self.val_pending = False  # stopped during this step's validation: redo it first
        self.train_time_s = 0.0
        self.last_saved_step: int | None = None
        self.ranks = current_ranks()
        self._clock = time.perf_counter()

    @property
    def resume_hint(self) -> str:
        return f"{self.steps.resume_command} --resume {self.run_dir}"

    def resume_from(self, payload: dict[str, Any], source: str = "last.pt") -> None:
        """Continue from a ``last.pt`` payload; RNG states are restored last.

        Raises:
            CheckpointError: The payload does not fit the strategy.
        """
        self.steps.load_state_dict(payload, source)
        self.step = self.last_saved_step = int(payload["step"])
        self.best = dict(payload["val"])
        self.val_pending = bool(payload.get("val_pending", False))
        self.train_time_s = float(payload.get("train_time_s", 0.0))
        per_rank = payload.get("rng_ranks") or []
        same_ranks = len(per_rank) == self.ranks.world_size
        restore_rng_state(per_rank[self.ranks.rank] if same_ranks else payload["rng"])

    def run(self, stop: StopRequest | None = None) -> dict[str, Any]:
        """Train to the last step.

        Returns:
            The best validation: ``{"accuracy", "ci95", "step", ...best_extras}``.

        Raises:
            NonFiniteLossError: A loss was NaN or infinite; no update was made with it.
            Preempted: ``stop`` fired; ``last.pt`` is up to date.
        """
        steps = self.steps
        bar = Progress(steps.label, steps.total_steps, self.step)
        self._clock = time.perf_counter()
        window = _Window()
        try:
            if self.val_pending:
                self._validate(stop)
                self._save_last()
            while self.step < steps.total_steps:
                self._train_step(window)
                bar.update()
                step = self.step
                if steps.log_due(step):
                    self._log(window, bar)
                validated = steps.validation_due(step)
                if validated:
                    self._validate(stop)
                    window.restart()  # validation time is not step time
                stopping = any_rank(bool(stop), self.ranks)  # a signal may reach one rank first
                if stopping:
                    self._log(window, bar)
                if validated or steps.checkpoint_due(step) or step == steps.total_steps or stopping:
                    self._save_last()
                if stopping and step < steps.total_steps:
                    raise self._preempted(stop.signal_name or "a stop request")
        finally:
            bar.close()
        return dict(self.best)

    def _train_step(self, window: _Window) -> None:
        step = self.step + 1
        try:
            window.add(self.steps.train_step(step))
        except NonFiniteLoss as bad:
            raise NonFiniteLossError(self._non_finite_message(bad.value, step)) from None
        self.step = step

    def _non_finite_message(self, value: float, step: int) -> str:
        last, best = self.run_dir / "last.pt", self.run_dir / "best.pt"
        if self.last_saved_step is None:
            kept = "no checkpoint was written yet"
        else:
            kept = f"the last good checkpoint is {last} (step {self.last_saved_step})"
            if best.exists():
                kept += f", the best so far {best}"
        return (
            f"loss is {value} at step {step}{self.steps.where(step)}; {kept} (try a lower "
            f"{self.steps.lr_key})"
        )

    def _log(self, window: _Window, bar: Progress) -> None:
        logged = window.pop(self.steps.rate_name, self.steps.items_per_step)
        if logged:
            logged |= self.steps.log_extras(self.step)
            self.tracker.log(logged, self.step)
            bar.show(self.step, logged)

    def _validate(self, stop: StopRequest | None) -> None:
        """Validate; keep ``best.pt``. A stop request during it writes ``last.pt`` as of
        before it, marked pending (a resumed run redoes it first), and raises Preempted."""
        rng = capture_rng_state()
        self.val_pending = True
        try:
            result = self.steps.validate(stop)
        except Interrupted as err:
            self._save_last(rng)
            raise self._preempted(err.signal_name) from None
        self.val_pending = False
        step = self.step
        if result.mean > self.best["accuracy"]:
            extras = self.steps.best_extras(step)
            ci95 = result.summary()["ci95"]
            self.best = {"accuracy": result.mean, "ci95": ci95, "step": step} | extras
            payload = self.steps.best_state() | extras
            payload |= {"config": config_to_dict(self.config), "step": step, "val": self.best}
            if self.ranks.is_main:
                save_checkpoint(self.run_dir / "best.pt", payload)
        self.tracker.log(
            {
                "val/accuracy": result.mean,
                "val/ci95": result.ci95,
                "val/best_accuracy": self.best["accuracy"],
            },
            step,
        )
        logger.info(
            "step %d%s: validation accuracy %.4f ± %.4f (best %.4f at step %d)",
            step,
            self.steps.where(step),
            result.mean,
            result.ci95,
            self.best["accuracy"],
            self.best["step"],
        )

    def _save_last(self, rng: dict[str, Any] | None = None) -> Path:
        now = time.perf_counter()
        self.train_time_s += now - self._clock
        self._clock = now
        rng_ranks = gather_objects(rng or capture_rng_state(), self.ranks)
        path = self.run_dir / "last.pt"
        self.last_saved_step = self.step
        if not self.ranks.is_main:
            return path
        payload = self.steps.state_dict() | {
            "config": config_to_dict(self.config),
            "step": self.step,
            "val": dict(self.best),
            "rng": rng_ranks[0],
            "data": self.fingerprint,
            "val_pending": self.val_pending,
            # Wall time of all training so far, so a resumed run reports the whole.
            "train_time_s": self.train_time_s,
        }
        if self.ranks.active:  # each rank's generators, for a resume with as many ranks
            payload["rng_ranks"] = rng_ranks
        return save_checkpoint(path, payload)

    def _preempted(self, signal_name: str) -> Preempted:
        return Preempted(signal_name, self.step, self.run_dir / "last.pt", self.resume_hint)


class _Window:
    """Training metrics since the last log, with step time and throughput."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.metrics: list[dict[str, float]] = []
        self.start = time.perf_counter()

    def add(self, metrics: dict[str, float]) -> None:
        self.metrics.append(metrics)

    def pop(self, rate_name: str, items_per_step: int) -> dict[str, float]:
        """The ``train/*`` means of the window (``{}`` if empty); then a new window."""
        window, elapsed = self.metrics, time.perf_counter() - self.start
        self.restart()
        if not window:
            return {}
        return {
            "train/loss": sum(m["loss"] for m in window) / len(window),
            "train/accuracy": sum(m["accuracy"] for m in window) / len(window),
            "train/lr": window[-1]["lr"],
            "train/step_time_s": elapsed / len(window),
            f"train/{rate_name}": len(window) * items_per_step / elapsed,
        }
