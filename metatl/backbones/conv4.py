"""Conv-4: the 64-filter network of Vinyals et al. (2016), used by MAML and ProtoNet."""

from __future__ import annotations

import torch
from torch import nn

from metatl.backbones.base import Backbone, InputSpec, infer_out_dim
from metatl.backbones.registry import register_backbone

__all__ = ["Conv4"]


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (padding 1) -> BatchNorm -> ReLU -> 2x2 max-pool: halves height and width."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class Conv4(Backbone):
    """Four conv blocks of ``hidden`` filters, flattened.

    On 28x28 input the output is ``hidden`` features (1x1 map); on 84x84 it is
    ``hidden * 5 * 5`` (1,600 for 64 filters), as in the ProtoNet and MAML papers.

    Args:
        in_channels: Input channels.
        image_size: Expected input height and width.
        hidden: Filters per block.
        mean: Per-channel input mean (defaults to 0.5 each).
        std: Per-channel input std (defaults to 0.5 each).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        hidden: int = 64,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        self.input_spec = InputSpec(
            channels=in_channels,
            size=image_size,
            mean=tuple(mean) if mean else (0.5,) * in_channels,
            std=tuple(std) if std else (0.5,) * in_channels,
        )
        self.features = nn.Sequential(
            conv_block(in_channels, hidden),
            conv_block(hidden, hidden),
            conv_block(hidden, hidden),
            conv_block(hidden, hidden),
        )
        self.out_dim = infer_out_dim(self.features, self.input_spec)

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, out_dim]``."""
        return self.features(x).flatten(1)


@register_backbone("conv4")
def conv4(**kwargs: object) -> Conv4:
    return Conv4(**kwargs)  # type: ignore[arg-type]
