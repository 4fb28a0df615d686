"""Your own backbone, registered once and named from a YAML config like the built-in ones.

    python examples/custom_backbone.py --quick     # synthetic blobs, ~10 s

A backbone lists its stages in ``blocks`` (in input-to-output order; fine-tuning the top N
blocks, ANIL and the transfer tools address them) and ends with a parameter-free
``forward_tail``; ``input_spec`` tells the data pipeline the size and normalisation it wants.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

import metatl
from episodes.synthetic import write_blob_folder
from metatl.backbones import Backbone, InputSpec


class TwoBlockNet(Backbone):
    """Two wide conv blocks, then global average pooling: ``[B, C, S, S] -> [B, width]``."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, width: int = 96) -> None:
        super().__init__()
        self.input_spec = InputSpec(
            in_channels, image_size, (0.5,) * in_channels, (0.5,) * in_channels
        )
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)
            )
            for c in (in_channels, width)
        )
        self.out_dim = width

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.stages)

    def forward_tail(self, h: torch.Tensor) -> torch.Tensor:
        return h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.forward_tail(x)


@metatl.register_backbone("two_block")
def two_block(**kwargs: object) -> TwoBlockNet:
    return TwoBlockNet(**kwargs)  # type: ignore[arg-type]


CONFIG = """\
data: {{dataset: image_folder, root: {root}, image_size: 28}}
model: {{algorithm: protonet, backbone: two_block}}
episodes: {{way: 5, shot: 1, query: 5}}
train: {{steps: {steps}, val_every: {steps}, val_episodes: 20, val_query: 5}}
test: {{shots: [1, 5], query: 5, episodes: 50}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="image folder with train/, val/, test/")
    parser.add_argument("--quick", action="store_true", help="synthetic blobs, 40 steps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = (
            write_blob_folder(Path(tmp) / "data", {"train": 20, "val": 5, "test": 5}, 12, 120.0)
            if args.quick
            else args.data
        )
        config = Path(tmp) / "two_block.yaml"
        config.write_text(CONFIG.format(root=root, steps=40 if args.quick else 1000))
        run = metatl.fit(config, [f"out_dir={Path(tmp) / 'runs'}", "tracking.wandb.mode=disabled"])
        backbone = metatl.load_learner(run.run_dir).learner.backbone
        print(f"backbone: {type(backbone).__name__} with {len(backbone.blocks)} blocks")
        print(run.table())


if __name__ == "__main__":
    main()
