"""Corrupted test images: how far do AdaBN and TENT, without a label, bring few-shot accuracy back?

Loads a pretraining run (a backbone and its source classifier), corrupts the test split with
noise, blur, elastic distortion and low contrast at severities 1-5, and scores 5-way 1-shot
episodes by nearest class mean on the features of the model as it is (source_only), with
BatchNorm statistics re-estimated on the corrupted images (adabn), and after TENT's entropy
minimisation on them (tent); the same episodes everywhere. Prints the table and plots
accuracy against severity.

    python -m metatl.pretrain --config configs/pretrain_conv4_glyphs.yaml name=glyph-pretrain
    python examples/corruption_robustness.py --run runs/glyph-pretrain --data data/glyphs
    python examples/corruption_robustness.py --quick      # a tiny synthetic run (~20 s)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import metatl
from episodes import EpisodeSpec
from episodes.corruptions import CORRUPTIONS
from episodes.synthetic import write_blob_folder
from metatl.adaptation import corruption_setting, corruption_study
from metatl.config import load_config
from metatl.reports.plots import plot_corruption_curves
from metatl.training import run_pretraining
from metatl.training.evaluation import format_table


def quick_run(root: Path) -> Path:
    """A Conv-4 pretrained for 3 epochs on 20 synthetic blob classes."""
    write_blob_folder(root / "data", {"train": 20, "val": 5, "test": 5}, 20, noise=30.0, seed=1)
    settings = [
        "data.dataset=image_folder",
        f"data.root={root / 'data'}",
        "pretrain.epochs=3",
        "pretrain.batch_size=40",
        "train.val_episodes=10",
        "train.val_query=5",
        "test.episodes=10",
        "test.query=5",
        f"out_dir={root / 'runs'}",
        "name=quick",
        "tracking.wandb.mode=disabled",
    ]
    return run_pretraining(load_config(None, settings)).run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a pretraining or adaptation run directory")
    parser.add_argument("--data", default="data/glyphs", help="the dataset's root")
    parser.add_argument("--dataset", default="glyphs")
    parser.add_argument("--split", default="test", help="the split to corrupt (new classes)")
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--plot", default="corruption_robustness.png")
    parser.add_argument("--quick", action="store_true", help="a tiny synthetic run instead")
    args = parser.parse_args()
    kinds, severities = CORRUPTIONS, (0, 1, 2, 3, 4, 5)
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            args.run, args.dataset = quick_run(Path(tmp)), "image_folder"
            args.data, args.episodes = str(Path(tmp) / "data"), 30
            kinds, severities = ("gaussian_noise", "contrast"), (0, 3, 5)
        loaded = metatl.load_learner(args.run)
        if loaded.classifier is None:
            parser.error(f"{args.run} holds no classifier (TENT needs one): use a pretrain run")
        size = loaded.config.data.image_size
        data = metatl.load_dataset(args.dataset, args.data, args.split, image_size=size)
        table = corruption_study(
            loaded.learner.backbone,
            loaded.classifier,
            data,
            kinds=kinds,
            severities=severities,
            spec=EpisodeSpec(5, args.shot, 15 if not args.quick else 5),
            episodes=args.episodes,
        )
    print(f"\n5-way {args.shot}-shot accuracy (%), nearest class mean, {args.episodes} episodes:\n")
    print(format_table(table))
    curves = {
        kind: {
            s: {m: (r.mean, r.ci95) for m, r in table[corruption_setting(kind, s)].items()}
            for s in severities
        }
        for kind in kinds
    }
    print(f"\nplot: {plot_corruption_curves(curves, args.plot)}")


if __name__ == "__main__":
    main()
