"""Unsupervised domain adaptation: no target label, yet better on the target than as trained.

Trains a Conv-4 digit classifier on digits rendered from fonts (labelled source) with each
adaptation method on scikit-learn's handwritten digits (target, read without labels): source
only (the control), DANN and MCC during training, AdaBN and TENT on top of each at test time.
Every variant is scored on the same handwritten test digits, so the differences are paired;
then which checkpoint each label-free criterion would have chosen, against the oracle's.

    make digits                                     # the benchmark, once (~1 minute)
    python examples/domain_adaptation.py            # three runs, about 10 minutes on a CPU
    python examples/domain_adaptation.py --quick    # a synthetic shifted domain (~20 s)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from PIL import Image

import metatl
from metatl.adaptation.selection import Selection, format_selection
from metatl.training.evaluation import format_paired_table, format_table

TARGET = "target test images"
SPLITS = ("source_train", "source_val", "target_train", "target_test")


def write_shifted_domains(root: Path, classes: int = 6, per_class: int = 30) -> Path:
    """An image folder of ``classes`` blob patterns in two domains: the source as drawn, the
    target at a third of the contrast, brighter and noisier (a shift BatchNorm can undo)."""
    gen = torch.Generator().manual_seed(0)
    patterns = torch.rand(classes, 1, 7, 7, generator=gen)
    patterns = torch.nn.functional.interpolate(patterns, size=28)[:, 0] * 255
    for split in SPLITS:
        for c, pattern in enumerate(patterns):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = pattern + 40 * torch.randn(28, 28, generator=gen)
                if split.startswith("target"):
                    image = 0.35 * image + 120 + 25 * torch.randn(28, 28, generator=gen)
                pixels = image.clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/digits", help="the digits benchmark's root")
    parser.add_argument("--out", default="runs", help="where the runs go")
    parser.add_argument("--quick", action="store_true", help="a tiny synthetic shift instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            root = write_shifted_domains(Path(tmp) / "data")
            config = [
                "data.dataset=image_folder",
                f"data.root={root}",
                "data.train_split=source_train",
                "data.val_split=source_val",
                "data.test_split=target_test",
                "pretrain.epochs=3",
                "pretrain.batch_size=30",
                "adapt.tent_batch_size=30",
                f"out_dir={tmp}/runs",
            ]
            preset, overrides = None, config
        else:
            preset = "configs/adapt_conv4_digits.yaml"
            overrides = [f"data.root={args.data}", f"out_dir={args.out}"]
        table: dict[str, dict] = {TARGET: {}}
        for method in ("source_only", "dann", "mcc"):
            options = [*overrides, f"adapt.method={method}", "tracking.wandb.mode=disabled"]
            run = metatl.adapt_domain(preset, options) if preset else metatl.adapt_domain(options)
            table[TARGET] |= run.test[TARGET]
            print(f"\n{method}: model selection without target labels ({run.run_dir})\n")
            print(format_selection([Selection(**row) for row in run.selection]))
    print("\nTarget accuracy (%), every variant on the same target test images:\n")
    print(format_table(table))
    print("\nAgainst source only (percentage points, paired over the same images):\n")
    print(format_paired_table(table, reference="source_only"))


if __name__ == "__main__":
    main()
