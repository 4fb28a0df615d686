"""``python -m metatl.transfer layers [--config FILE] [--quick] [key=value ...]`` (or
``--resume STUDY_DIR``): the layer-transfer study (which blocks are general, which specific);
``python -m metatl.transfer compare --source NAME=SPEC ... [--config FILE] [--quick]
[key=value ...]``: which source and which of its blocks to transfer, and whether to."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from metatl.cli import add_run_arguments, check_resume, run_main
from metatl.config import load_config
from metatl.training.preemption import stop_on_signals
from metatl.transfer.study import run_layer_study

# A study small enough for about a minute on 2 CPU cores: one seed, few classes, 2 epochs.
QUICK = (
    "layers.seeds=[0]",
    "layers.max_classes=40",
    "pretrain.epochs=3",
    "pretrain.batch_size=64",
)


# A comparison for a first look: few episodes, two budgets, short fine-tuning.
QUICK_COMPARE = (
    "compare.episodes=10",
    "compare.shots=[1,5]",
    "compare.score_images=300",
    "finetune.steps=10",
    "pretrain.epochs=1",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metatl.transfer",
        description="What transfers: measured tools of transfer learning.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    layers = commands.add_parser(
        "layers",
        help="the layer-transfer study of Yosinski et al. 2014",
        description="Split the classes into tasks A and B (random: similar; by stroke count, "
        "radical or your groups: dissimilar), train baseA and baseB, then for each n the "
        "networks BnB, BnB+, AnB, AnB+ and the random-frozen control on B; report accuracy "
        "on held-out images of B against n (the paper's Figures 2 and 3) and which of the "
        "paper's findings hold.",
        epilog="Overrides: dotted config keys, e.g. layers.seeds=[0,1] layers.splits=[random] "
        f"pretrain.epochs=4. --quick puts {' '.join(QUICK)} before them.",
    )
    add_run_arguments(layers)
    layers.add_argument(
        "--quick", action="store_true", help="a small study for a first look (about a minute)"
    )
    compare = commands.add_parser(
        "compare",
        help="which source model and which of its blocks to transfer, and whether to",
        description="Score every source on the same episodes of the target data per label "
        "budget: nearest class mean and linear probe on every block, fine-tuning the top N "
        "blocks for every N, a checkpoint's own adaptation, against training from scratch "
        "and raw pixels; per-block transferability scores and their ranking of the sources "
        "(Kendall tau); negative transfer; the classic advice checked against the measurement.",
        epilog="Source specs: <backbone>@random (e.g. conv4@random), <backbone>@<weights> "
        "(e.g. mobilenet_v2@IMAGENET1K_V1), or a metatl checkpoint / run directory; "
        "NAME=SPEC names one. Overrides: dotted config keys, e.g. compare.shots=[1,5,20] "
        f"compare.all_labels=true data.dataset=fashion_mnist. --quick puts "
        f"{' '.join(QUICK_COMPARE)} before them.",
    )
    compare.add_argument(
        "--source",
        action="append",
        metavar="NAME=SPEC",
        help="a source model (repeat for several); adds to compare.sources",
    )
    compare.add_argument("--config", help="YAML file of config keys (default: built-in defaults)")
    compare.add_argument("--data-root", metavar="DIR", help="where the target data is (data.root)")
    compare.add_argument(
        "--interpolate",
        action="store_true",
        help="resolve ${...} interpolations in your --config file and overrides",
    )
    compare.add_argument("--quick", action="store_true", help="a small comparison for a first look")
    args, overrides = parser.parse_known_args(argv)
    if args.command == "compare":
        return run_main(lambda: _compare(args, overrides))
    return run_main(lambda: _layers(args, overrides))


def _compare(args: argparse.Namespace, overrides: list[str]) -> int:
    from metatl.reports.compare import render_summary, write_compare_report
    from metatl.transfer.compare_run import run_compare

    quick = list(QUICK_COMPARE) if args.quick else []
    config = load_config(args.config, [*quick, *overrides], interpolate=args.interpolate)
    if args.source:
        sources = [*config.compare.sources, *args.source]
        config = dataclasses.replace(
            config, compare=dataclasses.replace(config.compare, sources=sources)
        )
    with stop_on_signals() as stop:
        result = run_compare(
            config, data_root=args.data_root, stop=stop, report=write_compare_report
        )
    print(render_summary(result))
    print(f"\nreport: {result.out_dir / 'report.md'}")
    return 0


def _layers(args: argparse.Namespace, overrides: list[str]) -> int:
    from metatl.reports.layers import write_study_report

    check_resume(args, overrides)
    if args.resume and args.quick:
        check_resume(args, ["--quick"])
    quick = list(QUICK) if args.quick else []
    config = load_config(args.config, [*quick, *overrides], interpolate=args.interpolate)
    with stop_on_signals() as stop:
        result = run_layer_study(
            config,
            resume_dir=args.resume,
            data_root=args.data_root,
            stop=stop,
            report=write_study_report,
        )
    print(f"\nlayer study {result.study_dir}: {len(result.records)} runs")
    print(f"report: {result.study_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
