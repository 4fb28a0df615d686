"""Which source model should I transfer from, which of its blocks, and should I transfer at all?

Compares source models on your labelled target data, every method on the same episodes per
label budget: probes on every block, fine-tuning the top blocks, a meta-trained checkpoint's
own adaptation, against training from scratch and raw pixels; flags negative transfer, ranks
the sources by transferability scores and prints the classic advice next to the measurement.

    python examples/transfer_compare.py --data data/glyphs --split test \\
        --source imagenet=mobilenet_v2@IMAGENET1K_V1 --source mine=runs/<run> \\
        --source random=conv4@random
    python examples/transfer_compare.py --quick   # synthetic data, a tiny source (~30 s)

The same as ``python -m metatl.transfer compare``, from Python.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from episodes.synthetic import write_blob_folder
from metatl.config import load_config
from metatl.reports.compare import render_summary, write_compare_report
from metatl.training.pretrain import run_pretraining
from metatl.transfer import run_compare


def quick(workdir: Path) -> list[str]:
    """Overrides of a small comparison: a Conv-4 pretrained briefly on the 30 training
    classes against a random Conv-4, on the 10 test classes."""
    data = write_blob_folder(workdir / "data", {"train": 30, "test": 10}, 16, 120.0, seed=1)
    common = [
        "data.dataset=image_folder",
        f"data.root={data}",
        "data.val_split=test",
        f"out_dir={workdir / 'runs'}",
        "tracking.wandb.mode=disabled",
    ]
    pretrain = ["name=source", "pretrain.epochs=3", "pretrain.batch_size=32"]
    pretrain += ["test.episodes=5", "test.query=5", "train.val_query=5"]
    torch.manual_seed(0)
    source = run_pretraining(load_config(None, [*common, *pretrain])).run_dir
    return [
        *common,
        f"compare.sources=[blobs={source},random=conv4@random]",
        "compare.shots=[1,5]",
        "compare.episodes=8",
        "compare.query=5",
        "compare.finetune_blocks=[1,4]",
        "compare.score_images=160",
        "finetune.steps=5",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="dataset root (data.root); --dataset says its kind")
    parser.add_argument("--dataset", default="glyphs", help="data.dataset (default glyphs)")
    parser.add_argument("--split", default="test", help="the target split")
    parser.add_argument("--source", action="append", default=[], metavar="NAME=SPEC")
    parser.add_argument("--quick", action="store_true", help="synthetic data, a tiny source")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            overrides = quick(Path(tmp))
        else:
            if not args.data or not args.source:
                parser.error("give --data and one or more --source, or --quick")
            sources = ",".join(args.source)
            overrides = [
                f"data.dataset={args.dataset}",
                f"data.root={args.data}",
                f"compare.split={args.split}",
                f"compare.sources=[{sources}]",
            ]
        result = run_compare(load_config(None, overrides), report=write_compare_report)
        print(render_summary(result))
        print(f"\nreport: {result.out_dir / 'report.md'}")


if __name__ == "__main__":
    main()
