"""What every ``python -m metatl.X`` entrypoint shares: logging and turning errors into
one-line messages with a non-zero exit code."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from metatl.training.preemption import EXIT_PREEMPTED, Preempted

__all__ = ["USER_ERRORS", "run_main"]

# Errors caused by the user's input: printed as one line, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, FileNotFoundError)


def run_main(body: Callable[[], int]) -> int:
    """Run an entrypoint body; a user error becomes ``error: ...`` on stderr and exit 2, a
    run stopped by SIGTERM/SIGINT (checkpoint written) exits with ``EXIT_PREEMPTED`` (75)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return body()
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Preempted as stop:
        print(str(stop), file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
