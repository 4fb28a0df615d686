"""Stopping cleanly on SIGTERM/SIGINT, as cluster schedulers and sweep agents do.

The first signal sets a :class:`StopRequest`. Long loops (training steps, validation, test and
evaluation episodes) poll it and stop within one step or episode: a training run writes a
checkpoint and raises :class:`Preempted`; anything else raises :class:`Interrupted`. The
process then exits with :data:`EXIT_PREEMPTED`. A second signal exits at once with the
signal's default action, after removing the temporary file of any write in flight
(checkpoints are written by atomic rename, so whatever was on disk stays intact).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from metatl.atomic_io import discard_partial_writes

__all__ = ["EXIT_PREEMPTED", "Interrupted", "Preempted", "StopRequest", "stop_on_signals"]

logger = logging.getLogger(__name__)

# sysexits.h EX_TEMPFAIL: "temporary failure, the user is invited to retry" -- resume the run.
EXIT_PREEMPTED = 75

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):  # noqa: N818 -- a control-flow signal, not an error
    """A stop request cut an operation short (an evaluation, a test, a validation)."""

    def __init__(self, signal_name: str, message: str | None = None) -> None:
        self.signal_name = signal_name
        super().__init__(message or f"stopped by {signal_name}")


class Preempted(Interrupted):
    """A run stopped on a signal after writing ``checkpoint``; resume it with ``--resume``."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path, resume_hint: str) -> None:
        self.step, self.checkpoint = step, checkpoint
        super().__init__(
            signal_name,
            f"stopped by {signal_name} after step {step}; checkpoint {checkpoint}; "
            f"continue with: {resume_hint}",
        )


class StopRequest:
    """Set by the signal handler; loops poll it (``if stop:``) or call :meth:`check`."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None

    def check(self) -> None:
        """Raise :class:`Interrupted` if a stop was requested."""
        if self.signal_name is not None:
            raise Interrupted(self.signal_name)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, SIGTERM/SIGINT set the yielded request instead of killing the process.

    Outside the main thread (where Python cannot install handlers) the request never fires.
    Forked children (DataLoader workers) inherit the handler but ignore the signal: the main
    process stops them when it stops, and the user hears about it once.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    owner = os.getpid()

    def handle(signum: int, _frame: object) -> None:
        if os.getpid() != owner:
            return
        name = signal.Signals(signum).name
        if request:
            logger.warning("second %s: exiting now", name)
            discard_partial_writes()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(owner, signum)
            return
        request.signal_name = name
        logger.warning(
            "%s received: stopping after the current step or episode (send it again to exit "
            "at once)",
            name,
        )

    previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
