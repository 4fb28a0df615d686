"""Features of every block of a backbone, and how transferable each block's features are.

"Small and different data: use earlier layers" (see ``TRANSFER.md``) needs the features of
each block, not only the last: :func:`block_features` runs a backbone once over a set of
images and keeps every block's output (spatially averaged for feature maps), and
:func:`block_scores` scores each block on a labelled target set with LogME and H-score.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from episodes import LabelledImages
from metatl.backbones import Backbone
from metatl.training.data import ImageTransform, load_split
from metatl.transfer.scores import h_score, leep, logme, nce
from metatl.transfer.similarity import mmd
from metatl.transfer.statistics_gap import batchnorm_gaps, check_images

if TYPE_CHECKING:
    from metatl.transfer.sources import Source

__all__ = ["block_features", "block_scores", "sample_images", "source_scores"]


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
    check_images(images)
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


def sample_images(data: LabelledImages, n: int, seed: int, per_class: int = 10) -> LabelledImages:
    """A seeded, class-balanced sample of about ``n`` images of ``data`` (all if no more).

    Scores such as LogME need several images of each class they see: with 500 classes of 20
    images and ``n=2000``, a uniform sample would give most classes 4 images or fewer. Here
    each chosen class gives ``max(per_class, n // classes)`` images (or all it has), and as
    many classes are chosen (at random) as that budget allows.
    """
    if len(data) <= n:
        return data
    generator = torch.Generator().manual_seed(seed)
    take = max(per_class, n // data.num_classes)
    classes = torch.randperm(data.num_classes, generator=generator)[: max(2, n // take)]
    keep = []
    for label in classes.sort().values.tolist():
        members = (data.labels == label).nonzero().flatten()
        order = torch.randperm(len(members), generator=generator)[:take]
        keep.append(members[order])
    index = torch.cat(keep).sort().values
    return LabelledImages(data.images[index], data.labels[index], data.class_names, data.name)


def source_scores(
    source: Source,
    data: LabelledImages,
    n_images: int = 2000,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """How well ``source`` is expected to transfer to ``data``, measured without training.

    Per block: LogME and H-score of its features (:func:`block_scores`), the gap between the
    target's feature statistics and the source's BatchNorm statistics
    (:func:`~metatl.transfer.statistics_gap.batchnorm_gaps`; NaN for a random
    initialisation, whose statistics come from no data), and the RBF MMD between the
    block's features of target images and of the source's own training images when the
    source knows where they are (else NaN). Per source: LEEP and NCE of its classifier
    (NaN without one).

    Args:
        source: The source model.
        data: Labelled target images; a seeded sample of ``n_images`` of them is scored.
        n_images: Images scored (and source images for the MMD).
        seed: Seed of the samples.
        device: Where the backbone runs.

    Returns:
        ``(per block [{"block", "dim", "logme", "h_score", "gap", "mmd"}], {"leep", "nce"})``.
    """
    sample = sample_images(data, n_images, seed)
    per_block = block_scores(source.backbone, sample, device=device)
    gaps = batchnorm_gaps(source.backbone, sample.images, device=device)
    if source.random_init:  # BatchNorm statistics of no data: no gap to measure
        gaps = [math.nan] * len(gaps)
    distances = _source_mmd(source, sample, n_images, seed, device)
    for row, gap, distance in zip(per_block, gaps, distances, strict=True):
        row["gap"], row["mmd"] = gap, distance
    return per_block, _classifier_scores(source, sample, device)


def _source_mmd(
    source: Source, sample: LabelledImages, n: int, seed: int, device: torch.device | str
) -> list[float]:
    """Per block MMD between target and source images' features (NaN without source data)."""
    blocks = len(source.backbone.blocks)
    if source.data is None:
        return [math.nan] * blocks
    own = sample_images(load_split(source.data, source.data.train_split), n, seed)
    if own.image_shape[0] != sample.image_shape[0]:  # grey vs colour: no common input
        return [math.nan] * blocks
    target = block_features(source.backbone, sample.images, device=device)
    origin = block_features(source.backbone, own.images, device=device)
    return [mmd(x, y) for x, y in zip(origin, target, strict=True)]


@torch.no_grad()
def _classifier_scores(
    source: Source, sample: LabelledImages, device: torch.device | str
) -> dict[str, float]:
    if source.classifier is None:
        return {"leep": math.nan, "nce": math.nan}
    features = block_features(source.backbone, sample.images, device=device)[-1]
    probs = torch.softmax(source.classifier.float()(features).double(), dim=1)
    return {"leep": leep(probs, sample.labels), "nce": nce(probs.argmax(1), sample.labels)}
