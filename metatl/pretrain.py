"""``python -m metatl.pretrain [--config FILE] [key=value ...]`` or ``--resume RUN_DIR``:
pretraining of a backbone (``pretrain.objective``: supervised whole-class, rotation, SimCLR
or supervised+rotation), then a few-shot test of it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from metatl.cli import add_run_arguments, command_config, run_main, start_run
from metatl.training.pretrain import run_pretraining


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metatl.pretrain",
        description="Pretrain a backbone by pretrain.objective: supervised (cross-entropy over "
        "every training class, the default), rotation (predict 0/90/180/270 degrees) or "
        "simclr (contrastive views), both from the images alone, or supervised+rotation; "
        "keep the best on few-shot validation (nearest class mean), and report test accuracy "
        "± 95% CI on a fixed set of episodes. Use the result as "
        "model.pretrained=RUN_DIR/best.pt for python -m metatl.train.",
        epilog="Overrides: dotted keys of the config, e.g. pretrain.epochs=10, "
        "pretrain.objective=rotation or --pretrain.lr=0.1.",
    )
    add_run_arguments(parser)
    args, overrides = parser.parse_known_args(argv)

    def body() -> int:
        config = command_config(args, overrides)
        result = start_run(run_pretraining, config, args)
        best = result.best_val
        ci = "n/a" if best["ci95"] is None else f"{100 * best['ci95']:.2f}"
        print(
            f"\nBest validation accuracy {100 * best['accuracy']:.2f} ± {ci} after epoch "
            f"{best['epoch']}; the backbone: "
            f"model.pretrained={result.run_dir / 'best.pt'}"
        )
        print(f"\nTest accuracy (mean ± 95% CI), run {result.run_dir}:\n")
        print(result.table())
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
