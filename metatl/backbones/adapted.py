"""Backbones re-assembled from another library's classifier (torchvision, timm).

An :class:`AdaptedBackbone` owns the source model's modules as ``stages`` (stem first, one
entry per top-level stage) followed by a parameter-free ``tail`` (pooling, flatten); the
classifier head is left out. It remembers how the source model named every tensor, so that
the source library's state dicts (``conv1.weight``, ``features.3.conv.1.weight`` ...) load
into it, head keys dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from metatl.backbones.base import Backbone, InputSpec

__all__ = ["AdaptedBackbone", "GreyToRGB"]


class GreyToRGB(nn.Module):
    """One normalised grey channel -> three channels normalised with per-channel mean/std.

    The grey input is normalised with the averages of ``mean`` and ``std``; the output is
    exactly what replicating the raw grey image to RGB and normalising it per channel gives.
    Buffers only (not saved), no parameters.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.grey_mean = sum(mean) / len(mean)
        self.grey_std = sum(std) / len(std)
        m = torch.tensor(mean).view(1, -1, 1, 1)
        s = torch.tensor(std).view(1, -1, 1, 1)
        self.register_buffer("scale", self.grey_std / s, persistent=False)
        self.register_buffer("shift", (self.grey_mean - m) / s, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 1:
            raise ValueError(f"GreyToRGB takes 1-channel input, got {x.shape[1]} channels")
        return x * self.scale + self.shift


class AdaptedBackbone(Backbone):
    """``tail(stages(x))`` with ``stages`` taken from a source model, its head removed.

    Args:
        source: The source model; only used to learn the names of its tensors.
        stem: Named modules run first; grouped into the first stage, ``stem``.
        stages: Named top-level stages after the stem, in input-to-output order.
        tail: Parameter-free module after the last stage, giving ``[B, out_dim]``.
        head_prefixes: Key prefixes of the source's classifier, dropped when loading.
        out_dim: Feature size.
        size: Input height and width the weights were trained at.
        mean: RGB mean of the weights' normalisation.
        std: RGB std of the weights' normalisation.
        in_channels: 3, or 1 for grey input (see :class:`GreyToRGB`).
    """

    def __init__(
        self,
        source: nn.Module,
        stem: Sequence[tuple[str, nn.Module]],
        stages: Sequence[tuple[str, nn.Module]],
        tail: nn.Module,
        *,
        head_prefixes: Sequence[str],
        out_dim: int,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if in_channels == 3:
            adapter: nn.Module = nn.Identity()
            self.input_spec = InputSpec(3, size, tuple(mean), tuple(std))
        elif in_channels == 1:
            adapter = GreyToRGB(mean, std)
            self.input_spec = InputSpec(1, size, (adapter.grey_mean,), (adapter.grey_std,))
        else:
            raise ValueError(f"{type(self).__name__} takes in_channels=3 or 1, got {in_channels}")
        stem_module = nn.Sequential(OrderedDict([("input", adapter), *stem]))
        self.stages = nn.Sequential(OrderedDict([("stem", stem_module), *stages]))
        if any(True for _ in tail.parameters()):
            raise ValueError("the tail after the last stage must have no parameters")
        self.tail = tail
        self.out_dim = out_dim
        self.head_prefixes = tuple(head_prefixes)
        ours = {id(t): k for k, t in self.state_dict(keep_vars=True).items()}
        self.source_keys: dict[str, str] = {
            k: ours[id(t)] for k, t in source.state_dict(keep_vars=True).items() if id(t) in ours
        }
        """Source model's state-dict key -> this backbone's key."""

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.stages)

    def forward_tail(self, h: torch.Tensor) -> torch.Tensor:
        """What :meth:`forward` does after the last block (parameter-free)."""
        return self.tail(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, out_dim]`` pooled features."""
        return self.tail(self.stages(x))

    def convert_state_dict(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state dict in this backbone's layout, from its own or the source's layout.

        Source keys are renamed, the source's classifier keys dropped; keys that are neither
        are kept as they are (so that loading reports them).
        """
        own = self.state_dict().keys()
        if all(k in own for k in state):
            return dict(state)
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if key in self.source_keys:
                out[self.source_keys[key]] = value
            elif not key.startswith(self.head_prefixes):
                out[key] = value
        return out
