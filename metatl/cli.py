"""What every ``python -m metatl.X`` entrypoint shares: logging and turning errors into
one-line messages with a non-zero exit code."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from argparse import ArgumentParser, Namespace
from collections.abc import Callable, Sequence
from typing import TypeVar

from metatl.config import ConfigError, RunConfig, load_config
from metatl.reports import write_run_report
from metatl.training.preemption import EXIT_PREEMPTED, Interrupted, stop_on_signals

__all__ = ["USER_ERRORS", "add_run_arguments", "check_resume", "run_main", "start_run"]

RunT = TypeVar("RunT")

# Errors caused by the user's input: printed as one line, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, FileNotFoundError)


def run_main(body: Callable[[], int]) -> int:
    """Run an entrypoint body; a user error becomes ``error: ...`` on stderr and exit 2, a
    run or evaluation stopped by SIGTERM/SIGINT (:class:`Interrupted`; a run has written its
    checkpoint) exits with ``EXIT_PREEMPTED`` (75)."""
    # Under torchrun rank 0 tells the story and prints the tables; the others only warn.
    main_rank = (os.environ.get("RANK", "0").strip() or "0") == "0"
    level = logging.INFO if main_rank else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    quiet = contextlib.nullcontext() if main_rank else contextlib.redirect_stdout(io.StringIO())
    try:
        with quiet:
            return body()
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(str(stop), file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def add_run_arguments(parser: ArgumentParser) -> None:
    """``--config FILE``, ``--resume RUN_DIR``, ``--data-root DIR`` and ``--interpolate``, as
    every run-starting entrypoint has."""
    parser.add_argument("--config", help="YAML file of config keys (default: built-in defaults)")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a stopped run from its last.pt, with its own config (exactly: the "
        "result equals an uninterrupted run's)",
    )
    parser.add_argument(
        "--data-root",
        metavar="DIR",
        help="where the dataset is (as data.root=DIR); with --resume, where the run's data "
        "is now if it moved (it must be the same data)",
    )
    parser.add_argument(
        "--interpolate",
        action="store_true",
        help="resolve OmegaConf interpolations such as ${oc.env:VAR} in your --config file "
        "and overrides (off by default: configs are data); the resolved values are stored",
    )


def check_resume(args: Namespace, overrides: Sequence[str]) -> None:
    """A resumed run keeps the config it started with: refuse a new one (``--data-root``
    alone may change, to follow data that moved)."""
    if args.resume and (args.config or overrides or args.interpolate):
        given = " ".join(overrides) or args.config or "--interpolate"
        raise ConfigError(
            "--resume continues a run with the config it was started with; drop "
            f"--config and the overrides ({given}); if the data moved, use --data-root DIR"
        )


def command_config(
    args: Namespace, overrides: Sequence[str], extra: Sequence[str] = ()
) -> RunConfig:
    """The config a run command starts with: ``--config`` with the overrides (then ``extra``),
    or, with ``--resume``, a placeholder (the run's own config is read from its ``last.pt``)
    once :func:`check_resume` has found no new config given."""
    check_resume(args, overrides)
    if args.resume:
        return RunConfig()
    return load_config(args.config, [*overrides, *extra], interpolate=args.interpolate)


def start_run(run: Callable[..., RunT], config: RunConfig, args: Namespace) -> RunT:
    """Call ``run`` (run_experiment, run_pretraining) as a command does: SIGTERM/SIGINT stop
    it at the next step or episode with its checkpoint written, and it ends with its report.

    Args:
        run: The run function.
        config: The new run's config (ignored with ``args.resume``).
        args: ``resume`` and ``data_root`` from :func:`add_run_arguments`.
    """
    with stop_on_signals() as stop:
        return run(
            config,
            resume_dir=args.resume,
            data_root=args.data_root,
            stop=stop,
            report=write_run_report,
        )
