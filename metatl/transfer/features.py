"""Features of every block of a backbone, and how transferable each block's features are.

"Small and different data: use earlier layers" (see ``TRANSFER.md``) needs the features of
each block, not only the last: :func:`block_features` runs a backbone once over a set of
images and keeps every block's output (spatially averaged for feature maps), and
:func:`block_scores` scores each block on a labelled target set with LogME and H-score.
"""

from __future__ import annotations

import torch

from episodes import LabelledImages
from metatl.backbones import Backbone
from metatl.training.data import ImageTransform
from metatl.transfer.scores import h_score, logme

__all__ = ["block_features", "block_scores"]


@torch.no_grad()
def block_features(
    backbone: Backbone,
    images: torch.Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> list[torch.Tensor]:
    """The output of every block of ``backbone`` for ``images``, in one pass.

    Entry ``k - 1`` is what block ``k`` (of ``backbone.blocks``) outputs, averaged over its
    spatial positions when it is a feature map; the last entry is what the backbone itself
    outputs (its last block followed by ``forward_tail``), so it equals ``backbone(x)``.
    The backbone runs in eval mode (BatchNorm with running statistics) and is left in the
    mode it was in.

    Args:
        backbone: The feature extractor.
        images: uint8 ``[N, C, H, W]`` (transformed to the backbone's input here).
        batch_size: Images per forward pass.
        device: Where the backbone runs.

    Returns:
        ``len(backbone.blocks)`` float32 tensors on the CPU: ``[N, C_k]`` for blocks before the
        last, ``[N, out_dim]`` for the last.

    Raises:
        ValueError: ``images`` is not a non-empty uint8 ``[N, C, H, W]`` tensor.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or len(images) == 0:
        raise ValueError(
            f"images must be a non-empty uint8 [N, C, H, W] tensor, got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    transform = ImageTransform(backbone.input_spec)
    blocks = backbone.blocks
    was_training = backbone.training
    backbone.eval()
    outputs: list[list[torch.Tensor]] = [[] for _ in blocks]
    try:
        for start in range(0, len(images), batch_size):
            h = transform(images[start : start + batch_size]).to(device)
            for k, block in enumerate(blocks):
                h = block(h)
                last = k == len(blocks) - 1
                pooled = backbone.forward_tail(h) if last else _spatial_mean(h)
                outputs[k].append(pooled.float().cpu())
    finally:
        backbone.train(was_training)
    return [torch.cat(parts) for parts in outputs]


def block_scores(
    backbone: Backbone,
    data: LabelledImages,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> list[dict[str, float]]:
    """LogME and H-score of each block's features on a labelled target set.

    Higher means a linear classifier on that block is expected to do better (You et al.
    2021; Bao et al. 2019). Scores of one block across backbones are comparable; across
    blocks of different widths they are a guide, not a measurement (H-score grows with the
    number of classes the features separate, LogME is per sample and per class).

    Args:
        backbone: The source model's feature extractor.
        data: Target images and labels (e.g. a split's training images).
        batch_size: Images per forward pass.
        device: Where the backbone runs.

    Returns:
        One ``{"block", "dim", "logme", "h_score"}`` per block, ``block`` counting from 1.
    """
    features = block_features(backbone, data.images, batch_size=batch_size, device=device)
    return [
        {
            "block": k,
            "dim": f.shape[1],
            "logme": logme(f, data.labels),
            "h_score": h_score(f, data.labels),
        }
        for k, f in enumerate(features, start=1)
    ]


def _spatial_mean(h: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, C]``; other shapes are flattened to ``[B, D]``."""
    return h.mean(dim=(2, 3)) if h.dim() == 4 else h.flatten(1)
