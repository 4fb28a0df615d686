"""Raw pixels as features: the nearest-class-mean baseline when paired with ProtoNet."""

from __future__ import annotations

import torch

from metatl.backbones.base import Backbone, InputSpec
from metatl.backbones.registry import register_backbone

__all__ = ["Pixels"]


class Pixels(Backbone):
    """Flattens the (normalised) image: ``[B, C, H, W] -> [B, C * H * W]``. No parameters.

    ProtoNet on this backbone is nearest class mean on raw pixels, the floor every learned
    embedding must clear.

    Args:
        in_channels: Input channels.
        image_size: Expected input height and width.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        self.input_spec = InputSpec(
            in_channels, image_size, (0.5,) * in_channels, (0.5,) * in_channels
        )
        self.out_dim = in_channels * image_size * image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


@register_backbone("pixels")
def pixels(**kwargs: object) -> Pixels:
    return Pixels(**kwargs)  # type: ignore[arg-type]
