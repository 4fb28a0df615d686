"""``python -m metatl.transfer layers [--config FILE] [--quick] [key=value ...]`` or
``--resume STUDY_DIR``: the layer-transfer study (which blocks are general, which specific)."""

from __future__ import annotations

import argparse
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
    args, overrides = parser.parse_known_args(argv)
    return run_main(lambda: _layers(args, overrides))


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
