"""ResNet-12 of TADAM / MetaOptNet (Oreshkin et al. 2018; Lee et al. 2019)."""

from __future__ import annotations

import torch
from torch import nn

from metatl.backbones.base import Backbone, InputSpec
from metatl.backbones.registry import register_backbone

__all__ = ["ResNet12"]


class ResidualBlock(nn.Module):
    """Three 3x3 conv-BN layers with leaky ReLU, a 1x1 conv-BN shortcut, then 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int, slope: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [
                nn.Conv2d(
                    in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False
                ),
                nn.BatchNorm2d(out_channels),
            ]
            if i < 2:
                layers.append(nn.LeakyReLU(slope))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.activation = nn.LeakyReLU(slope)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.activation(self.body(x) + self.shortcut(x)))


class ResNet12(Backbone):
    """Four residual blocks (64-160-320-640 channels by default) and global average pooling.

    Args:
        in_channels: Input channels.
        image_size: Expected input height and width (84 in the papers).
        widths: Channels of the four blocks.
        mean: Per-channel input mean (defaults to 0.5 each).
        std: Per-channel input std (defaults to 0.5 each).
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 84,
        widths: tuple[int, int, int, int] = (64, 160, 320, 640),
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
        channels = (in_channels, *widths)
        self.stages = nn.Sequential(
            *(ResidualBlock(channels[i], channels[i + 1]) for i in range(len(widths)))
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = widths[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.stages)

    def forward_tail(self, h: torch.Tensor) -> torch.Tensor:
        return self.pool(h).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, out_dim]``."""
        return self.forward_tail(self.stages(x))


@register_backbone("resnet12")
def resnet12(**kwargs: object) -> ResNet12:
    return ResNet12(**kwargs)  # type: ignore[arg-type]
