"""Write a benchmark build into a scratch folder and put it in place only once it is complete."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["publish_build"]

T = TypeVar("T")


def publish_build(out: Path, check_output: Callable[[], None], build: Callable[[Path], T]) -> T:
    """Run ``build(tmp)`` in a fresh sibling folder of ``out``, then swap it in for ``out``.

    ``check_output()`` runs again just before the swap, since ``out`` may have appeared while
    building. On any failure (also KeyboardInterrupt) the scratch folder is removed and an
    earlier ``out`` is left as it was, so a reader never sees half a build.

    Args:
        out: The folder the build ends up in.
        check_output: Raises if ``out`` must not be replaced.
        build: Writes the whole output into the folder it is given; its result is returned.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()  # not tempfile.mkdtemp: its 0700 mode would stick to the output
    try:
        result = build(tmp)
        check_output()
        old = out.with_name(f"{tmp.name}-old")
        if out.exists():
            out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:
            if old.exists():
                old.rename(out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
