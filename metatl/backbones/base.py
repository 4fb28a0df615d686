"""What every backbone exposes: its feature size and the input it expects."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Backbone", "InputSpec"]


@dataclass(frozen=True)
class InputSpec:
    """The input a backbone expects, so that data transforms can follow it.

    Attributes:
        channels: Image channels (1 grey, 3 RGB).
        size: Height and width in pixels.
        mean: Per-channel mean subtracted after scaling to ``[0, 1]``.
        std: Per-channel standard deviation divided by after that.
    """

    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"InputSpec: mean {self.mean} and std {self.std} need {self.channels} values"
            )


class Backbone(nn.Module):
    """A feature extractor: ``forward(x [B, C, H, W]) -> [B, out_dim]``.

    Subclasses set ``out_dim`` and ``input_spec``. ``blocks`` lists the top-level stages in
    input-to-output order, so that layer-wise adaptation can address "the top N blocks".
    """

    out_dim: int
    input_spec: InputSpec

    @property
    def blocks(self) -> list[nn.Module]:
        return [self]

    def forward_tail(self, h: torch.Tensor) -> torch.Tensor:
        """What ``forward`` does after the last of ``blocks`` (parameter-free).

        ``forward(x)`` must equal running ``blocks`` in order, then this; layer-wise
        adaptation relies on it to run the top blocks on cached trunk features.
        """
        return h.flatten(1)

    def extra_repr(self) -> str:
        return f"out_dim={self.out_dim}, input={self.input_spec}"


def infer_out_dim(module: nn.Module, spec: InputSpec) -> int:
    """Feature size of ``module`` on a dummy input of ``spec`` (run in eval mode)."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        out = module(torch.zeros(1, spec.channels, spec.size, spec.size))
    module.train(was_training)
    return int(out.reshape(1, -1).shape[1])
