"""``python -m metatl.evaluate --checkpoint RUN_DIR [--methods protonet linear finetune]
[--way 5 --shot 1 5 --episodes 600] [--out-dir DIR] [key=value ...]``.

Every evaluation ends in its own directory (by default ``evaluations/<timestamp>`` in the
checkpoint's run directory) with ``results.json``, ``report.md`` and plots. The directory
is created once the evaluation has finished: an evaluation stopped by SIGTERM/SIGINT (exit
code 75) or by an error leaves nothing behind.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from episodes import LabelledImages
from metatl.algorithms import MAML_VARIANTS, Learner
from metatl.atomic_io import write_text_atomic
from metatl.cli import run_main
from metatl.config import ConfigError, RunConfig, config_to_dict, parse_overrides
from metatl.reports import write_run_report
from metatl.tracking import create_tracker
from metatl.training import load_checkpoint, load_split
from metatl.training.checkpoint import checkpoint_config
from metatl.training.device import resolve_device
from metatl.training.distributed import launched_ranks, process_group, rank_device
from metatl.training.evaluation import (
    EvalResult,
    build_methods,
    default_methods,
    evaluate_learners,
    few_episodes_note,
    format_paired_table,
    format_table,
    list_methods,
    paired_difference,
)
from metatl.training.meta_train import test_metrics
from metatl.training.preemption import stop_on_signals
from metatl.training.restore import learner_from_checkpoint
from metatl.training.run_dir import check_creatable_dir, new_directory

logger = logging.getLogger("metatl.evaluate")

ARCHITECTURE_KEYS = (
    "model.algorithm",
    "model.backbone",
    "model.distance",
    "model.maml.head",
    "model.maml.meta_sgd",
    "model.caml.dim",
    "model.caml.layers",
    "model.caml.heads",
    "model.caml.ffn_mult",
    "model.caml.max_way",
)
"""Config keys whose value decides which weights a checkpoint holds: an override that changes
one is refused (``model.distance`` only for a ProtoNet checkpoint, ``model.maml.*`` only for
one of the MAML family, ``model.caml.*`` only for a CAML one). Others that may change shapes
(``data.image_size``, ``model.input_size``, ``episodes.way`` for a learned head) are allowed as
long as the weights still fit."""

_KEY = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


class OutputPathError(ValueError):
    """An output path (``--json``, ``--out-dir``) cannot be written."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = split_overrides(argv, _one_value_options(parser))
    args, unknown = parser.parse_known_args(rest)
    # --key=value and --key value: unknown to the parser, config keys too.
    return run_main(lambda: _evaluate(args, [*overrides, *unknown]))


def _evaluate(args: argparse.Namespace, overrides: list[str]) -> int:
    """Check the outputs, load, evaluate (stopping cleanly on SIGTERM/SIGINT), then write
    the evaluation directory: it exists only once there are results to put in it."""
    _check_outputs(args)
    checkpoints = [_checkpoint_file(c) for c in args.checkpoint]
    out_base = args.out_dir
    if out_base is None:
        out_base = checkpoints[0].parent / "evaluations" / time.strftime("%Y%m%d-%H%M%S")
        _check_out_dir(out_base, "the evaluation directory")
    with contextlib.ExitStack() as hold:
        stop = hold.enter_context(stop_on_signals())
        loaded = [load_checkpoint(c) for c in checkpoints]
        configs = [
            _effective_config(c, file, overrides, args)
            for c, file in zip(loaded, checkpoints, strict=True)
        ]
        config = configs[0]
        # Under torchrun the episodes are split across the ranks; rank 0 reports.
        device = rank_device(resolve_device(config.device), launched_ranks())
        ranks = hold.enter_context(process_group(device))
        _check_same_data(configs, checkpoints)
        split = load_split(config.data, args.split or config.data.test_split)
        stop.check()  # a signal while the data loaded: no need to build anything more
        learners = _learners(loaded, checkpoints, configs, split, args.methods or [])
        logger.info(
            "evaluating %s on %d setting(s) of %d episodes (%s split, %d classes)",
            ", ".join(learners),
            len(config.test.shots),
            config.test.episodes,
            split.name,
            split.num_classes,
        )
        note = few_episodes_note([config.test.episodes])
        if note:
            logger.warning("%s", note)
        started = time.perf_counter()
        table = evaluate_learners(learners, split, config, stop=stop)
        eval_time = time.perf_counter() - started
        if not ranks.is_main:  # rank 0 writes the evaluation directory
            return 0
        _print_tables(table, split, config)
        results = _results(checkpoints, loaded, config, split.name, table, eval_time)
        if args.json:
            write_text_atomic(args.json, _json_text(results["test"]))
        out_dir = new_directory(out_base)
        write_text_atomic(out_dir / "results.json", _json_text(results))
        plots = write_run_report(out_dir, results=results, records=[], table=table)
        _track(config, out_dir, checkpoints[0], table, plots)
    print(f"\nReport: {out_dir / 'report.md'} (results.json and {len(plots)} plot(s) beside it)")
    return 0


def _results(
    checkpoints: Sequence[Path],
    loaded: Sequence[Mapping[str, Any]],
    config: RunConfig,
    split: str,
    table: Mapping[str, Mapping[str, EvalResult]],
    eval_time: float,
) -> dict[str, Any]:
    """The evaluation's ``results.json``: JSON-ready, ``None`` where a number is undefined."""
    results = {
        "checkpoint": str(checkpoints[0]),
        "checkpoint_step": loaded[0].get("step"),
        "run_dir": str(checkpoints[0].parent),
        "best_val": loaded[0].get("val") or {},
        "split": split,
        "test": {s: {m: r.summary() for m, r in rows.items()} for s, rows in table.items()},
        "paired": paired_differences(table),
        "config": config_to_dict(config),
        "eval_time_s": eval_time,
    }
    if len(checkpoints) > 1:
        labels = _labels(checkpoints)
        results["checkpoints"] = dict(zip(labels, map(str, checkpoints), strict=True))
    return _finite(results)


def _check_same_data(configs: Sequence[RunConfig], checkpoints: Sequence[Path]) -> None:
    """Several checkpoints are compared on one dataset."""
    first = _data_key(configs[0])
    for other, file in zip(configs[1:], checkpoints[1:], strict=True):
        if _data_key(other) != first:
            raise ConfigError(
                f"{file} was trained on other data ({_data_key(other)}) than "
                f"{checkpoints[0]} ({first}); checkpoints are compared on one dataset: give "
                "data.* overrides or --data-root so that they agree"
            )


def _learners(
    loaded: Sequence[Mapping[str, Any]],
    checkpoints: Sequence[Path],
    configs: Sequence[RunConfig],
    split: LabelledImages,
    methods: Sequence[str],
) -> dict[str, Learner]:
    """Method name -> learner over all checkpoints (``<run>/<method>`` for several)."""
    labels = _labels(checkpoints)
    learners: dict[str, Learner] = {}
    for i, (checkpoint, file, config) in enumerate(zip(loaded, checkpoints, configs, strict=True)):
        learner = learner_from_checkpoint(checkpoint, file, config, split.image_shape)
        names = list(methods) or default_methods(config)
        if i:  # raw pixels do not depend on the checkpoint: score them once
            names = [n for n in names if n != "pixels"]
        prefix = f"{labels[i]}/" if len(loaded) > 1 else ""
        for name, method in build_methods(names, learner, config).items():
            learners[name if name == "pixels" else prefix + name] = method
    return learners


def _print_tables(
    table: Mapping[str, Mapping[str, EvalResult]], split: LabelledImages, config: RunConfig
) -> None:
    test = config.test
    print(
        f"\n{split.name}: {split.num_classes} classes, {test.episodes} episodes per setting, "
        f"{test.query} queries per class\n"
    )
    print(format_table(table))
    paired = format_paired_table(table)
    if paired:
        print("\nPaired differences (percentage points, mean ± 95% CI over the episodes):\n")
        print(paired)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metatl.evaluate",
        description="Evaluate a checkpoint on fixed seeded test episodes: accuracy ± 95% CI "
        "per setting for each method, all on the same episodes, and the paired differences "
        "between methods.",
        epilog="Overrides: dotted config keys applied to the checkpoint's config, anywhere on "
        "the command line, e.g. finetune.n_blocks=2 or --test.query=5. Keys that decide the "
        f"architecture ({', '.join(ARCHITECTURE_KEYS)}) cannot change on a trained checkpoint.",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        nargs="+",
        help="a .pt file or a run directory; several are compared on the same episodes "
        "(their methods are named <run>/<method>), with paired differences",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        help="methods built on the checkpoint's backbone: its own algorithm or any of "
        f"{', '.join(list_methods())} (default: its own algorithm, and pixels unless "
        "--no-pixel-baseline)",
    )
    parser.add_argument("--way", type=int, help="classes per episode (default: the run's)")
    parser.add_argument("--shot", type=int, nargs="+", help="one or more shot counts")
    parser.add_argument("--query", type=int, help="queries per class")
    parser.add_argument("--episodes", type=int, help="episodes per setting (default 600)")
    parser.add_argument("--seed", type=int, help="seed of the episode sets")
    parser.add_argument("--split", help="data split to evaluate on (default: the test split)")
    parser.add_argument("--data-root", help="dataset root, if it moved since training")
    parser.add_argument("--no-pixel-baseline", action="store_true")
    parser.add_argument(
        "--out-dir",
        type=Path,
        help="directory for results.json, report.md and the plots (default: "
        "evaluations/<timestamp> in the checkpoint's run directory); an existing directory "
        "is never reused: DIR-2, DIR-3, ... instead",
    )
    parser.add_argument(
        "--json", type=Path, help="also write the per-setting summaries to this JSON file"
    )
    return parser


def split_overrides(
    argv: Sequence[str], one_value_options: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """Pull the ``key=value`` config overrides out of a command line, wherever they stand.

    An override is a token ``key=value`` whose key is a dotted path starting with a field
    of :class:`RunConfig` (``test.way=3``, ``finetune.n_blocks=2``, ``seed=1``), so that
    ``--checkpoint RUN test.way=3`` or ``--shot 1 test.way=3`` never reads it as a path or a
    shot count. A token right after an option that takes one value (``--json test=a.json``)
    is that option's value.

    Args:
        argv: The command line, without the program name.
        one_value_options: Option strings that take exactly one value.

    Returns:
        ``(overrides, the other tokens in order)``.
    """
    sections = {f.name for f in dataclasses.fields(RunConfig)}
    overrides: list[str] = []
    rest: list[str] = []
    for i, token in enumerate(argv):
        key, equals, _ = token.partition("=")
        previous = argv[i - 1] if i else ""
        is_value = (
            previous.startswith("--")
            and "=" not in previous
            and any(option.startswith(previous) for option in one_value_options)
        )
        if equals and _KEY.fullmatch(key) and key.split(".")[0] in sections and not is_value:
            overrides.append(token)
        else:
            rest.append(token)
    return overrides, rest


def _one_value_options(parser: argparse.ArgumentParser) -> list[str]:
    """The parser's option strings that take exactly one value."""
    return [s for a in parser._actions if a.nargs is None for s in a.option_strings]


def _check_outputs(args: argparse.Namespace) -> None:
    """``--json`` and ``--out-dir`` can be written, checked before anything is loaded.

    Raises:
        OutputPathError: With the path and what is wrong with it.
    """
    if args.json is not None:
        if args.json.is_dir():
            raise OutputPathError(f"--json {args.json} is a directory; give a file name")
        parent = args.json.parent
        if not parent.is_dir():
            what = "is not a directory" if parent.exists() else "does not exist"
            raise OutputPathError(f"--json {args.json}: directory {parent} {what}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputPathError(f"--json {args.json}: directory {parent} is not writable")
    if args.out_dir is not None:
        _check_out_dir(args.out_dir, f"--out-dir {args.out_dir}")


def _check_out_dir(path: Path, name: str) -> None:
    """``path`` is a directory or can be created as one."""
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{name} is a file, not a directory")
    check_creatable_dir(path, name)


def _checkpoint_file(path: str) -> Path:
    file = Path(path)
    return file / "best.pt" if file.is_dir() else file


def _effective_config(
    checkpoint: Mapping[str, Any],
    file: Path,
    overrides: Sequence[str],
    args: argparse.Namespace,
) -> RunConfig:
    """A checkpoint's config with the overrides and the episode options applied.

    Raises:
        CheckpointError: The checkpoint has no (readable) config.
        ConfigError: An override is invalid or changes an :data:`ARCHITECTURE_KEYS` key.
    """
    _refuse_architecture_changes(checkpoint, file, overrides)
    # The episode options are overrides too, so that the schema checks their values.
    chosen = {
        "test.way": args.way,
        "test.shots": f"[{','.join(map(str, args.shot))}]" if args.shot else None,
        "test.query": args.query,
        "test.episodes": args.episodes,
        "test.seed": args.seed,
        "data.root": json.dumps(args.data_root) if args.data_root is not None else None,
    }
    options = [f"{key}={value}" for key, value in chosen.items() if value is not None]
    if args.no_pixel_baseline:
        options.append("test.pixel_baseline=false")
    return checkpoint_config(checkpoint, file, [*overrides, *options])


def _refuse_architecture_changes(
    checkpoint: Mapping[str, Any], file: Path, overrides: Sequence[str]
) -> None:
    """Refuse overrides that change an :data:`ARCHITECTURE_KEYS` key of the checkpoint's
    config (checked before the rest of the config, whose checks would blame other keys).

    Raises:
        ConfigError: Naming the keys, the values asked for and the checkpoint's.
    """
    stored = checkpoint_config(checkpoint, file)
    given = dict(o.partition("=")[::2] for o in parse_overrides(list(overrides)))
    algorithm = stored.model.algorithm
    keys = [
        k
        for k in ARCHITECTURE_KEYS
        if k in given
        and (k != "model.distance" or algorithm == "protonet")
        and (not k.startswith("model.maml.") or algorithm in (*MAML_VARIANTS, "imaml"))
        and (not k.startswith("model.caml.") or algorithm == "caml")
    ]
    if not keys:
        return
    try:
        asked = checkpoint_config(checkpoint, file, [f"{k}={given[k]}" for k in keys])
        wanted = {k: _get(asked, k) for k in keys if _get(asked, k) != _get(stored, k)}
    except ConfigError:  # e.g. an algorithm that the rest of the config does not allow
        wanted = {k: given[k] for k in keys}
    if wanted:
        hint = " (choose what to evaluate with --methods)" if "model.algorithm" in wanted else ""
        raise ConfigError(
            f"{', '.join(f'{k}={v}' for k, v in wanted.items())} cannot change on a trained "
            f"checkpoint: {file} has {', '.join(f'{k}={_get(stored, k)}' for k in wanted)}{hint}"
        )


def _get(config: RunConfig, key: str) -> Any:
    return functools.reduce(getattr, key.split("."), config)


def _data_key(config: RunConfig) -> tuple[str, str, int, str]:
    d = config.data
    return d.dataset, d.root, d.image_size, d.test_split


def _labels(checkpoints: Sequence[Path]) -> list[str]:
    """Each checkpoint's run directory name, numbered where names repeat."""
    names = [c.parent.name for c in checkpoints]
    return [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]


def _track(
    config: RunConfig,
    out_dir: Path,
    checkpoint: Path,
    table: Mapping[str, Mapping[str, EvalResult]],
    plots: Sequence[Path],
) -> None:
    """Log the evaluation as a run of its own (JSONL in ``out_dir``, and W&B as configured)."""
    wandb = config.tracking.wandb
    name = wandb.name or f"{checkpoint.parent.name}/eval-{out_dir.name}"
    config = dataclasses.replace(
        config,
        tracking=dataclasses.replace(config.tracking, wandb=dataclasses.replace(wandb, name=name)),
    )
    tracker = create_tracker(config, out_dir)
    try:
        tracker.log_config(config_to_dict(config) | {"checkpoint": str(checkpoint)})
        tracker.log(test_metrics(table), 0)
        tracker.log_summary(test_metrics(table))
        for plot in plots:
            tracker.log_image(plot.stem, plot, step=0)
        tracker.log_artifact(out_dir / "report.md")
    finally:
        tracker.close()


def paired_differences(
    table: Mapping[str, Mapping[str, EvalResult]],
) -> list[dict[str, Any]]:
    """Every pair of methods in each setting: ``{"setting", "a", "b", "difference", "ci95"}``,
    the mean and 95% half-width of the per-episode differences ``a - b`` (``ci95`` is
    ``None`` when undefined: one episode)."""
    pairs = []
    for setting, rows in table.items():
        for a, b in itertools.combinations(rows, 2):
            mean, ci = paired_difference(rows[a], rows[b])
            ci95 = None if math.isnan(ci) else ci
            pairs.append({"setting": setting, "a": a, "b": b, "difference": mean, "ci95": ci95})
    return pairs


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float (nested in dicts and lists) made ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json_text(value: Any) -> str:
    """Strict JSON (``null`` where a number is undefined, never a bare ``NaN``)."""
    return json.dumps(_finite(value), indent=2, sort_keys=True, allow_nan=False) + "\n"


if __name__ == "__main__":
    sys.exit(main())
