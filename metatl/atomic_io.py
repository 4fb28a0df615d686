"""Atomic file writes: a crash mid-write leaves the previous file (or none), never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["discard_partial_writes", "write_atomic", "write_text_atomic"]

# Temporary files of the writes in progress, removed by discard_partial_writes() when the
# process must die at once (a second SIGTERM) and cannot unwind to write_atomic's cleanup.
_IN_FLIGHT: set[str] = set()


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write`` on a temporary file next to ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    _IN_FLIGHT.add(tmp)
    try:
        # mkstemp makes the file private (0600); give it the permissions open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _IN_FLIGHT.discard(tmp)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def discard_partial_writes() -> None:
    """Remove the temporary files of writes still in progress (before an abrupt exit)."""
    for tmp in list(_IN_FLIGHT):
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _IN_FLIGHT.clear()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
