"""``python -m metatl.evaluate --checkpoint RUN_DIR [--methods protonet linear finetune]
[--way 5 --shot 1 5 --episodes 600] [--out-dir DIR] [key=value ...]``.

Every evaluation ends in its own directory (by default ``evaluations/<timestamp>`` in the
checkpoint's run directory) with ``results.json``, ``report.md`` and plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from episodes import LabelledImages
from metatl.algorithms import Learner
from metatl.atomic_io import write_text_atomic
from metatl.cli import run_main
from metatl.config import ConfigError, RunConfig, config_from_dict, config_to_dict
from metatl.reports import write_run_report
from metatl.tracking import create_tracker
from metatl.training import build_learner, load_checkpoint, load_split
from metatl.training.evaluation import (
    EvalResult,
    build_methods,
    default_methods,
    evaluate_learners,
    format_paired_table,
    format_table,
    list_methods,
    paired_difference,
)
from metatl.training.meta_train import new_directory, test_metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metatl.evaluate",
        description="Evaluate a checkpoint on fixed seeded test episodes: accuracy ± 95% CI "
        "per setting for each method, all on the same episodes, and the paired differences "
        "between methods.",
        epilog="Overrides: dotted config keys applied to the checkpoint's config, e.g. "
        "finetune.n_blocks=2 or --test.query=5 (once the schema has those sections).",
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
    args, overrides = parser.parse_known_args(argv)
    # `--methods a b key=value`: nargs="+" swallows the overrides that follow the names.
    methods = [m for m in args.methods or [] if "=" not in m]
    overrides += [m for m in args.methods or [] if "=" in m]

    def body() -> int:
        checkpoints = [_checkpoint_file(c) for c in args.checkpoint]
        loaded = [load_checkpoint(c) for c in checkpoints]
        configs = [_effective_config(c["config"], overrides, args) for c in loaded]
        config = configs[0]
        for other, file in zip(configs[1:], checkpoints[1:], strict=True):
            if _data_key(other) != _data_key(config):
                raise ConfigError(
                    f"{file} was trained on other data ({_data_key(other)}) than "
                    f"{checkpoints[0]} ({_data_key(config)}); checkpoints are compared on one "
                    "dataset: give data.* overrides or --data-root so that they agree"
                )
        split = load_split(config.data, args.split or config.data.test_split)
        labels = _labels(checkpoints)
        learners: dict[str, Learner] = {}
        for i, (checkpoint, run_config) in enumerate(zip(loaded, configs, strict=True)):
            learner = _learner(checkpoint, run_config, split)
            names = methods or default_methods(run_config)
            if i:  # raw pixels do not depend on the checkpoint: score them once
                names = [n for n in names if n != "pixels"]
            prefix = f"{labels[i]}/" if len(loaded) > 1 else ""
            for name, method in build_methods(names, learner, run_config).items():
                learners[name if name == "pixels" else prefix + name] = method
        started = time.perf_counter()
        table = evaluate_learners(learners, split, config)
        eval_time = time.perf_counter() - started
        print(
            f"\n{split.name}: {split.num_classes} classes, {config.test.episodes} episodes per "
            f"setting, {config.test.query} queries per class\n"
        )
        print(format_table(table))
        paired = format_paired_table(table)
        if paired:
            print("\nPaired differences (percentage points, mean ± 95% CI over the episodes):\n")
            print(paired)
        summaries = {s: {m: r.summary() for m, r in rows.items()} for s, rows in table.items()}
        if args.json:
            args.json.write_text(json.dumps(summaries, indent=2, sort_keys=True) + "\n")
        results = {
            "checkpoint": str(checkpoints[0]),
            "checkpoint_step": loaded[0].get("step"),
            "run_dir": str(checkpoints[0].parent),
            "best_val": loaded[0].get("val") or {},
            "split": split.name,
            "test": summaries,
            "paired": paired_differences(table),
            "config": config_to_dict(config),
            "eval_time_s": eval_time,
        }
        if len(checkpoints) > 1:
            results["checkpoints"] = {
                label: str(c) for label, c in zip(labels, checkpoints, strict=True)
            }
        out_dir = new_directory(
            args.out_dir or checkpoints[0].parent / "evaluations" / time.strftime("%Y%m%d-%H%M%S")
        )
        write_text_atomic(
            out_dir / "results.json", json.dumps(results, indent=2, sort_keys=True) + "\n"
        )
        plots = write_run_report(out_dir, results=results, records=[], table=table)
        _track(config, out_dir, checkpoints[0], table, plots)
        print(
            f"\nReport: {out_dir / 'report.md'} (results.json and {len(plots)} plot(s) beside it)"
        )
        return 0

    return run_main(body)


def _checkpoint_file(path: str) -> Path:
    file = Path(path)
    return file / "best.pt" if file.is_dir() else file


def _effective_config(
    values: dict[str, Any], overrides: Sequence[str], args: argparse.Namespace
) -> RunConfig:
    """A checkpoint's config with the overrides and the episode options applied."""
    config = config_from_dict(values, overrides)
    chosen = {
        "way": args.way,
        "shots": args.shot,
        "query": args.query,
        "episodes": args.episodes,
        "seed": args.seed,
    }
    test = dataclasses.replace(
        config.test,
        **{k: v for k, v in chosen.items() if v is not None},
        pixel_baseline=not args.no_pixel_baseline,
    )
    data = config.data
    if args.data_root is not None:
        data = dataclasses.replace(data, root=args.data_root)
    return dataclasses.replace(config, test=test, data=data)


def _data_key(config: RunConfig) -> tuple[str, str, int, str]:
    d = config.data
    return d.dataset, d.root, d.image_size, d.test_split


def _labels(checkpoints: Sequence[Path]) -> list[str]:
    """Each checkpoint's run directory name, numbered where names repeat."""
    names = [c.parent.name for c in checkpoints]
    return [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]


def _learner(checkpoint: dict[str, Any], config: RunConfig, split: LabelledImages) -> Learner:
    channels, size, _ = split.image_shape
    # The checkpoint holds every weight: no need to resolve model.pretrained again.
    model = dataclasses.replace(config.model, pretrained="")
    learner = build_learner(
        dataclasses.replace(config, model=model), channels, size, n_way=config.episodes.way
    )
    state = checkpoint["model"]
    if checkpoint.get("kind") == "pretrain":  # a backbone and its pretraining classifier
        state = {k: v for k, v in state.items() if k.startswith("backbone.")}
    learner.load_state_dict(state)
    return learner


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
    the mean and 95% half-width of the per-episode differences ``a - b``."""
    pairs = []
    for setting, rows in table.items():
        for a, b in itertools.combinations(rows, 2):
            mean, ci = paired_difference(rows[a], rows[b])
            pairs.append({"setting": setting, "a": a, "b": b, "difference": mean, "ci95": ci})
    return pairs


if __name__ == "__main__":
    sys.exit(main())
