"""Stopping a run cleanly on SIGTERM/SIGINT, as cluster schedulers and sweep agents do.

The first signal asks the training loop to finish its current step, write a checkpoint and
raise :class:`Preempted`; the process then exits with :data:`EXIT_PREEMPTED`. A second signal
exits at once with the signal's default action; checkpoints are written by atomic rename, so
whatever was on disk stays intact.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["EXIT_PREEMPTED", "Preempted", "StopRequest", "stop_on_signals"]

logger = logging.getLogger(__name__)

# sysexits.h EX_TEMPFAIL: "temporary failure, the user is invited to retry" -- resume the run.
EXIT_PREEMPTED = 75

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):  # noqa: N818 -- a control-flow signal, not an error
    """A run stopped on a signal after writing ``checkpoint``; resume it with ``--resume``."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path, resume_hint: str) -> None:
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        super().__init__(
            f"stopped by {signal_name} after step {step}; checkpoint {checkpoint}; "
            f"continue with: {resume_hint}"
        )


class StopRequest:
    """Set by the signal handler; the training loop polls :attr:`signal_name` between steps."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, SIGTERM/SIGINT set the yielded request instead of killing the process.

    Outside the main thread (where Python cannot install handlers) the request never fires.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if request:
            logger.warning("second %s: exiting now", name)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        request.signal_name = name
        logger.warning(
            "%s received: finishing this step and writing a checkpoint (send it again to exit "
            "at once)",
            name,
        )

    previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
