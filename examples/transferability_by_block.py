"""Which block of a trained backbone transfers best to new classes? LogME and H-score per block.

Scores the features of every block of a metatl run's backbone on a labelled target split,
next to the same architecture at random initialisation (the control: what the architecture
alone gives), before any fine-tuning. Higher is better; a block where the trained backbone
scores no higher than the random one has learned nothing that transfers to these classes.
With fewer target images than feature dimensions (the --quick data: 60 images, 64 dims)
H-score saturates at classes - 1; read LogME there.

    python examples/transferability_by_block.py --run runs/<run> --data data/glyphs --split test
    python examples/transferability_by_block.py --quick     # trains a tiny run first (~15 s)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from episodes.synthetic import write_blob_folder
from metatl.backbones import create_backbone, load_pretrained
from metatl.config import DataConfig, load_config
from metatl.training import load_checkpoint, load_split, run_experiment
from metatl.transfer.features import block_scores


def trained_backbone(run: Path, channels: int, size: int) -> torch.nn.Module:
    """The backbone of a run's ``best.pt`` (meta-trained or pretrained)."""
    best = run / "best.pt" if run.is_dir() else run
    model = load_checkpoint(best)["config"]["model"]
    backbone = create_backbone(
        model["backbone"], in_channels=channels, image_size=model["input_size"] or size
    )
    return load_pretrained(backbone, best)


def quick_run(root: Path) -> tuple[Path, DataConfig]:
    """A tiny image folder of 30 synthetic classes and a ProtoNet trained on it (40 steps)."""
    write_blob_folder(root / "data", {"train": 20, "val": 5, "test": 5}, 12, noise=40.0, seed=1)
    data = ["data.dataset=image_folder", f"data.root={root / 'data'}", "episodes.way=5"]
    settings = [
        "train.steps=40",
        "train.val_every=40",
        "train.val_episodes=20",
        "train.val_query=5",
    ]
    settings += ["test.episodes=20", "test.query=5", "test.shots=[1]"]
    config = load_config(None, [*data, *settings, f"out_dir={root / 'runs'}", "name=quick"])
    return run_experiment(config).run_dir, config.data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a metatl run directory (its best.pt)")
    parser.add_argument("--data", default="data/glyphs", help="the glyph benchmark's root")
    parser.add_argument("--split", default="test", help="the target split (new classes)")
    parser.add_argument("--quick", action="store_true", help="train a tiny run, then score it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            run, data_config = quick_run(Path(tmp))
        else:
            run, data_config = args.run, DataConfig(dataset="glyphs", root=args.data)
        target = load_split(data_config, args.split)
        channels, size, _ = target.image_shape
        torch.manual_seed(0)
        backbones = {
            "random init": create_backbone("conv4", in_channels=channels, image_size=size),
            "trained": trained_backbone(run, channels, size),
        }
        print(f"{target.name}: {target.num_classes} classes, {len(target)} images\n")
        print("| backbone | block | dim | LogME | H-score |\n| --- | ---: | ---: | ---: | ---: |")
        for name, backbone in backbones.items():
            for row in block_scores(backbone, target):
                print(
                    f"| {name} | {row['block']} | {row['dim']} | {row['logme']:.3f} "
                    f"| {row['h_score']:.2f} |"
                )


if __name__ == "__main__":
    main()
