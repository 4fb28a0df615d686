"""The first k blocks of a backbone as a backbone of their own, for probes on earlier layers.

"Small and different data: put the classifier on earlier-layer features" needs a learner on
the features of block k, not only on the last block's. :class:`BlockPrefix` is a
:class:`~metatl.backbones.Backbone` whose output is what block k of another backbone outputs
(averaged over its spatial positions), sharing that backbone's weights; any learner (nearest
class mean, linear probe) then runs on it unchanged, and the evaluation's feature cache
serves every prefix once per image.
"""

from __future__ import annotations

import torch
from torch import nn

from metatl.backbones import Backbone
from metatl.backbones.base import infer_out_dim

__all__ = ["BlockPrefix", "block_prefixes"]


class BlockPrefix(Backbone):
    """Blocks ``1 .. k`` of ``backbone`` (its weights, not a copy), spatially averaged.

    With ``k`` equal to the number of blocks it computes exactly ``backbone(x)`` (the last
    block followed by ``forward_tail``); below that, ``[B, C_k]``: block k's feature map
    averaged over its positions, as :func:`metatl.transfer.features.block_features` does.

    Args:
        backbone: The source backbone.
        k: Blocks kept, ``1 .. len(backbone.blocks)``.

    Raises:
        ValueError: ``k`` is out of range.
    """

    def __init__(self, backbone: Backbone, k: int) -> None:
        super().__init__()
        blocks = backbone.blocks
        if not 1 <= k <= len(blocks):
            raise ValueError(f"k={k}: the backbone has blocks 1..{len(blocks)}")
        self.k, self.last = k, k == len(blocks)
        self.prefix = nn.ModuleList(blocks[:k])
        self._tail = backbone.forward_tail
        self.input_spec = backbone.input_spec
        modes = [m.training for m in self.modules()]  # infer_out_dim sets them all
        self.out_dim = backbone.out_dim if self.last else infer_out_dim(self, self.input_spec)
        for module, mode in zip(self.modules(), modes, strict=True):
            module.training = mode

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.prefix)

    def forward_tail(self, h: torch.Tensor) -> torch.Tensor:
        if self.last:
            return self._tail(h)
        return h.mean(dim=(2, 3)) if h.dim() == 4 else h.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` images -> ``[B, out_dim]`` features of block ``k``."""
        for block in self.prefix:
            x = block(x)
        return self.forward_tail(x)

    def extra_repr(self) -> str:
        return f"k={self.k}, out_dim={self.out_dim}"


def block_prefixes(backbone: Backbone) -> list[BlockPrefix]:
    """One :class:`BlockPrefix` per block of ``backbone``: ``[prefix(1), ..., prefix(L)]``."""
    return [BlockPrefix(backbone, k) for k in range(1, len(backbone.blocks) + 1)]
