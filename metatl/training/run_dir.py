"""A run directory's life: checked before it exists, created fresh, locked while written.

Every command that writes into a run directory (train, pretrain, their ``--resume``) goes
through here, so that the same checks hold for all of them:

- ``out_dir`` is checked before anything expensive starts (it must be a directory or not
  exist yet, and be creatable);
- a new run never reuses a directory (``name``, ``name-2``, ...);
- data and weight paths are stored absolute, so that a run resumes from any working
  directory, and ``--data-root`` can point a resumed run at data that moved;
- a process holds an exclusive lock on the directory while it writes there: a second
  ``--resume`` of the same run fails at once, naming the holder's pid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from episodes import LabelledImages
from metatl.config import ConfigError, RunConfig
from metatl.training.checkpoint import CheckpointError, load_checkpoint

__all__ = [
    "LOCK_FILE",
    "RunInUseError",
    "check_creatable_dir",
    "check_data_fingerprint",
    "check_out_dir",
    "data_fingerprint",
    "lock_run_dir",
    "new_directory",
    "new_run_dir",
    "read_last_checkpoint",
    "with_absolute_paths",
    "with_data_root",
]

LOCK_FILE = ".lock"


class RunInUseError(ValueError):
    """Another process is writing to the run directory."""


def check_out_dir(config: RunConfig) -> None:
    """``out_dir`` can hold a new run: a directory, or a path that can be created.

    Raises:
        ConfigError: ``out_dir`` (or a parent of it) is a file, or cannot be written.
    """
    check_creatable_dir(Path(config.out_dir), f"out_dir={config.out_dir!r}")


def check_creatable_dir(path: Path, name: str) -> None:
    """``path`` is a directory or can be made one: its nearest existing ancestor (itself,
    if it exists) is a writable directory.

    Args:
        path: The directory to check.
        name: How the user gave it (``out_dir='runs'``, ``--out-dir x``), for the message.

    Raises:
        ConfigError: ``{name}: {ancestor} is a file, not a directory`` or ``... is not
            writable``.
    """
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{name}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{name}: {existing} is not writable")


def new_run_dir(config: RunConfig, prefix: str | None = None) -> Path:
    """A fresh directory under ``out_dir``; never reuses (and so never overwrites) one.

    Args:
        config: ``out_dir`` and ``name`` (empty: ``<prefix>-<time>``) place it.
        prefix: Start of the automatic name; default ``<algorithm>-<backbone>-<dataset>``.
    """
    m = config.model
    prefix = prefix or f"{m.algorithm}-{m.backbone}-{config.data.dataset}"
    name = config.name or time.strftime(f"{prefix}-%Y%m%d-%H%M%S")
    return new_directory(Path(config.out_dir) / name)


def new_directory(base: Path) -> Path:
    """Create ``base``, or ``base-2``, ``base-3``, ... if it exists; never reuses one.

    ``mkdir`` itself is the test, so two processes starting at once get different ones.
    """
    candidate, n = base, 1
    while True:
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}-{n}")


@contextlib.contextmanager
def lock_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` for the block (``run_dir/.lock``, flock).

    The lock goes with the process: a crashed or killed holder releases it, so a stale lock
    never blocks a later ``--resume``.

    Raises:
        RunInUseError: Another live process holds it (the message names its pid).
    """
    path = Path(run_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunInUseError(
                f"run directory {run_dir} is in use by process {holder} (another train, "
                "pretrain or --resume of this run); wait for it to end or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_last_checkpoint(run_dir: Path) -> dict[str, Any]:
    """``run_dir/last.pt`` of an unfinished run, what every ``--resume`` starts from.

    Raises:
        CheckpointError: No such directory, an unreadable ``last.pt``, or a finished run.
    """
    if not run_dir.is_dir():
        raise CheckpointError(f"--resume {run_dir}: no such run directory")
    checkpoint = load_checkpoint(run_dir / "last.pt")
    if (run_dir / "results.json").exists():
        raise CheckpointError(
            f"run {run_dir} has finished (results.json exists); nothing to resume"
        )
    return checkpoint


def with_data_root(config: RunConfig, data_root: str | None) -> RunConfig:
    """``config`` with ``data.root`` replaced by ``data_root``, unless that is None."""
    if data_root is None:
        return config
    return dataclasses.replace(config, data=dataclasses.replace(config.data, root=data_root))


def with_absolute_paths(config: RunConfig) -> RunConfig:
    """``config`` with ``data.root`` and a ``model.pretrained`` file made absolute, as a run
    stores them: it then resumes from any working directory."""
    root = Path(config.data.root).expanduser()
    data = dataclasses.replace(config.data, root=str(root.absolute()))
    model = config.model
    pretrained = Path(model.pretrained).expanduser()
    if model.pretrained and pretrained.exists():
        model = dataclasses.replace(model, pretrained=str(pretrained.absolute()))
    return dataclasses.replace(config, data=data, model=model)


def data_fingerprint(splits: Mapping[str, LabelledImages]) -> dict[str, dict[str, Any]]:
    """What identifies each split's content cheaply: counts, image shape, class names."""
    return {
        name: {
            "images": len(data),
            "classes": data.num_classes,
            "image_shape": list(data.image_shape),
            "class_names_sha256": hashlib.sha256(
                "\n".join(data.class_names).encode("utf-8")
            ).hexdigest(),
        }
        for name, data in splits.items()
    }


def check_data_fingerprint(
    stored: Mapping[str, Any] | None, splits: Mapping[str, LabelledImages], root: str
) -> None:
    """A resumed run must read the data it was trained on (moved is fine, changed is not).

    Raises:
        CheckpointError: A split differs from the one recorded in ``last.pt``.
    """
    if not stored:  # written before fingerprints were stored
        return
    now = data_fingerprint(splits)
    for name, was in stored.items():
        if name in now and now[name] != was:
            changes = ", ".join(
                f"{key} {was.get(key)} -> {value}"
                for key, value in now[name].items()
                if was.get(key) != value
            )
            raise CheckpointError(
                f"the {name} split at {root} is not the data this run was trained on "
                f"({changes}); point --data-root at the original data"
            )
