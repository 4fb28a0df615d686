"""Training progress for a person: a bar on a terminal, plain log lines everywhere else.

A cluster job's log (``> run.log 2>&1``) is not a terminal: a progress bar there writes
thousands of carriage-return updates into the file. Off a terminal the bar is off and every
logged window becomes one ``logging`` line instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from tqdm.auto import tqdm

__all__ = ["Progress"]

logger = logging.getLogger("metatl.progress")


class Progress:
    """Progress over ``total`` steps, from ``initial``: a tqdm bar when stderr is a terminal.

    Args:
        desc: What is progressing, e.g. ``"meta-train"``.
        total: Steps in all.
        initial: Steps already done (a resumed run).
    """

    def __init__(self, desc: str, total: int, initial: int = 0) -> None:
        self.desc, self.total = desc, total
        self.bar = tqdm(
            total=total, initial=initial, desc=desc, unit="step", disable=None, dynamic_ncols=True
        )

    def update(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def show(self, step: int, logged: Mapping[str, float]) -> None:
        """Show a log window's means (``train/loss``, ``train/accuracy``, ...) on the bar,
        or, off a terminal, as one line ``<desc> step S/T: loss ..., accuracy ..., ...``."""
        short = {key.rsplit("/", 1)[-1]: value for key, value in logged.items()}
        if self.bar.disable:
            values = ", ".join(f"{key} {value:.4g}" for key, value in short.items())
            logger.info("%s step %d/%d: %s", self.desc, step, self.total, values)
        else:
            self.bar.set_postfix({k: f"{short[k]:.3f}" for k in ("loss", "accuracy") if k in short})

    def close(self) -> None:
        self.bar.close()
