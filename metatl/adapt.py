"""``python -m metatl.adapt [--config FILE] [key=value ...]`` or ``--resume RUN_DIR``:
unsupervised domain adaptation from a labelled source domain to an unlabelled target domain,
then the target test of every variant (see :mod:`metatl.adaptation.run`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from metatl.adaptation.run import TARGET_SETTING, run_adaptation
from metatl.adaptation.selection import Selection, format_selection
from metatl.cli import add_run_arguments, command_config, run_main, start_run
from metatl.training.evaluation import format_paired_table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metatl.adapt",
        description="Train a classifier on the labelled source domain (data.train_split) with "
        "adapt.method (source_only, dann or mcc) on the unlabelled target images "
        "(adapt.target_split, read without labels); keep the best on source validation "
        "accuracy; apply adapt.test_time (adabn, tent); report the target test accuracy ± "
        "95% CI of every variant on the same images, few-shot episodes of "
        "adapt.fewshot_split if set, and which checkpoint each label-free criterion would "
        "choose next to the oracle's.",
        epilog="Presets: configs/adapt_conv4_digits.yaml (fonts -> handwritten digits), "
        "configs/adapt_conv4_kanji.yaml (printed -> written kanji). Overrides: dotted keys, "
        "e.g. adapt.method=dann pretrain.epochs=5.",
    )
    add_run_arguments(parser)
    args, overrides = parser.parse_known_args(argv)

    def body() -> int:
        config = command_config(args, overrides)
        result = start_run(run_adaptation, config, args)
        print(f"\nTarget accuracy (mean ± 95% CI), run {result.run_dir}:\n")
        print(result.table())
        print("\nPaired differences (percentage points; same images, same episodes):\n")
        print(format_paired_table(result.test, reference=next(iter(result.test[TARGET_SETTING]))))
        print("\nModel selection without target labels (target accuracy of each choice):\n")
        print(format_selection([Selection(**row) for row in result.selection]))
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
