"""``python -m metatl.train [--config FILE] [key=value ...]`` or ``--resume RUN_DIR``:
meta-train, then test."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from metatl.cli import add_run_arguments, command_config, run_main, start_run
from metatl.tracking import sweep_overrides
from metatl.training import run_experiment


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metatl.train",
        description="Meta-train a few-shot learner, keep the best checkpoint on validation, "
        "and report test accuracy ± 95% CI on a fixed set of episodes.",
        epilog="Overrides: dotted keys of the config, e.g. optim.lr=3e-4 or --train.steps=2000.",
    )
    add_run_arguments(parser)
    args, overrides = parser.parse_known_args(argv)

    def body() -> int:
        # Under `wandb.agent(function=...)` the sweep's parameters win over everything.
        config = command_config(args, overrides, sweep_overrides())
        result = start_run(run_experiment, config, args)
        print(f"\nTest accuracy (mean ± 95% CI), run {result.run_dir}:\n")
        print(result.table())
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
