"""LabelledImages: a decoded, in-memory image collection that episodes are drawn from."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812

__all__ = ["LabelledImages", "merge_by_class", "resize_images"]


@dataclass(frozen=True)
class LabelledImages:
    """Images decoded once into a uint8 tensor, with integer labels and class names.

    Every reader in :mod:`episodes.datasets` returns one of these; samplers need only
    ``labels``, episode builders index ``images``.

    Attributes:
        images: uint8 tensor ``[N, C, H, W]``.
        labels: int64 tensor ``[N]`` with values in ``0 .. len(class_names) - 1``.
        class_names: Name of each class, indexed by label.
        name: What this collection is (e.g. ``"glyphs/test"``); used in error messages.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    name: str = "images"

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"{self.name}: images must be a uint8 tensor [N, C, H, W], "
                f"got {self.images.dtype} of shape {tuple(self.images.shape)}"
            )
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"{self.name}: labels must have shape [{self.images.shape[0]}], "
                f"got {tuple(self.labels.shape)}"
            )
        if self.labels.dtype != torch.int64:
            object.__setattr__(self, "labels", self.labels.long())
        if not isinstance(self.class_names, tuple):
            object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.labels.numel() and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)
        ):
            raise ValueError(
                f"{self.name}: labels must lie in 0..{len(self.class_names) - 1} "
                f"(one per class name), got {int(self.labels.min())}..{int(self.labels.max())}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        _, c, h, w = self.images.shape
        return int(c), int(h), int(w)

    def class_counts(self) -> torch.Tensor:
        """Number of images per class, int64 ``[num_classes]``."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def select_classes(self, classes: Sequence[int], name: str | None = None) -> LabelledImages:
        """The images of ``classes`` only, relabelled ``0..len(classes) - 1`` in that order."""
        classes = [int(c) for c in classes]
        remap = torch.full((self.num_classes,), -1, dtype=torch.long)
        remap[torch.tensor(classes, dtype=torch.long)] = torch.arange(len(classes))
        new_labels = remap[self.labels]
        keep = new_labels >= 0
        return LabelledImages(
            images=self.images[keep],
            labels=new_labels[keep],
            class_names=tuple(self.class_names[c] for c in classes),
            name=name or self.name,
        )

    def hold_out(self, fraction: float, seed: int) -> tuple[LabelledImages, LabelledImages]:
        """Split every class's images into a training part and a held-out part.

        Each class gives ``round(fraction * count)`` of its images (at least one, and at most
        ``count - 1``) to the held-out part, chosen by a permutation seeded with ``seed`` and
        the class name, so a class's split does not depend on which other classes are here.

        Args:
            fraction: Share of each class's images held out, in ``(0, 1)``.
            seed: Seed of the choice.

        Returns:
            ``(train, held_out)`` with the same classes and labels, images in their order here.

        Raises:
            ValueError: A class has fewer than two images (it cannot be in both parts).
        """
        counts = self.class_counts()
        short = [self.class_names[c] for c in range(self.num_classes) if counts[c] < 2]
        if short:
            raise ValueError(
                f"{self.name}: {len(short)} class(es) have fewer than 2 images, so none can "
                f"be held out for testing: {', '.join(short[:10])}"
            )
        held = torch.zeros(len(self), dtype=torch.bool)
        by_class = torch.argsort(self.labels, stable=True)
        starts = (torch.cumsum(counts, 0) - counts).tolist()
        for label, name in enumerate(self.class_names):
            members = by_class[starts[label] : starts[label] + int(counts[label])]
            take = min(max(round(fraction * len(members)), 1), len(members) - 1)
            generator = torch.Generator().manual_seed(_class_seed(seed, name))
            held[members[torch.randperm(len(members), generator=generator)[:take]]] = True
        parts = (
            LabelledImages(
                self.images[mask], self.labels[mask], self.class_names, f"{self.name}/{part}"
            )
            for mask, part in ((~held, "train"), (held, "held-out"))
        )
        return next(parts), next(parts)

    def resized(self, size: int) -> LabelledImages:
        """A copy with every image resized to ``size x size`` (see :func:`resize_images`)."""
        if self.image_shape[1:] == (size, size):
            return self
        return LabelledImages(
            resize_images(self.images, size), self.labels, self.class_names, self.name
        )


def merge_by_class(parts: Sequence[LabelledImages], name: str) -> LabelledImages:
    """The images of ``parts`` in one collection; classes of the same name are one class.

    Labels follow the order in which class names first appear (``parts`` in order).

    Raises:
        ValueError: No parts, or parts whose images differ in shape.
    """
    if not parts:
        raise ValueError(f"{name}: nothing to merge")
    shapes = {p.image_shape for p in parts}
    if len(shapes) > 1:
        raise ValueError(f"{name}: the parts hold images of different shapes {sorted(shapes)}")
    names = list(dict.fromkeys(n for p in parts for n in p.class_names))
    index = {n: i for i, n in enumerate(names)}
    labels = [
        torch.tensor([index[n] for n in p.class_names], dtype=torch.long)[p.labels] for p in parts
    ]
    return LabelledImages(
        torch.cat([p.images for p in parts]), torch.cat(labels), tuple(names), name
    )


def _class_seed(seed: int, class_name: str) -> int:
    """A 63-bit seed from ``seed`` and a class name (stable across runs and platforms)."""
    digest = hashlib.sha256(f"{seed}\0{class_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resize_images(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize a uint8 batch to ``size x size`` with antialiasing, in chunks to bound memory.

    An integer down-scaling factor uses area averaging (exact box filter, fast); other
    factors use antialiased bilinear interpolation.

    Args:
        images: uint8 ``[N, C, H, W]``.
        size: Target height and width.
        chunk: Images resized at a time.

    Returns:
        uint8 ``[N, C, size, size]``.
    """
    n, c, h, w = images.shape
    out = torch.empty((n, c, size, size), dtype=torch.uint8)
    integer_factor = h % size == 0 and w % size == 0 and h >= size and w >= size
    for start in range(0, n, chunk):
        batch = images[start : start + chunk].float()
        if integer_factor:
            batch = F.adaptive_avg_pool2d(batch, size)
        else:
            batch = F.interpolate(
                batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        out[start : start + chunk] = batch.round_().clamp_(0, 255).to(torch.uint8)
    return out
