"""UnlabelledImages: images with no labels at all, for whatever must not read labels.

Unsupervised domain adaptation gets the target domain's images and never their labels, and
self-supervised pretraining reads images only. Handing such code a :class:`LabelledImages`
and trusting it not to touch ``.labels`` is a promise; handing it an :class:`UnlabelledImages`
is a fact: the object holds the image tensor and a name, has no ``labels`` attribute, cannot be
given one (frozen, with slots), is not a ``LabelledImages``, keeps no reference to the
collection it came from, and indexing it yields images only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from episodes.data import LabelledImages, resize_images

__all__ = ["UnlabelledImages"]


@dataclass(frozen=True, slots=True)
class UnlabelledImages:
    """Images decoded into a uint8 tensor, without labels or class names.

    A map-style dataset: ``len(x)`` images, ``x[i]`` is image ``i`` (``[C, H, W]``), and
    ``x[indices]`` (a slice, a list or a tensor of indices) is a batch ``[n, C, H, W]``, so a
    ``torch.utils.data.DataLoader`` can draw from it directly.

    Attributes:
        images: uint8 tensor ``[N, C, H, W]``.
        name: What this collection is (e.g. ``"digits/target_train"``); for messages.
    """

    images: torch.Tensor
    name: str = "images"

    def __post_init__(self) -> None:
        if (
            not isinstance(self.images, torch.Tensor)
            or self.images.dtype != torch.uint8
            or self.images.dim() != 4
        ):
            got = (
                f"{self.images.dtype} of shape {tuple(self.images.shape)}"
                if isinstance(self.images, torch.Tensor)
                else type(self.images).__name__
            )
            raise ValueError(f"{self.name}: images must be a uint8 tensor [N, C, H, W], got {got}")

    @classmethod
    def from_labelled(cls, data: LabelledImages, name: str | None = None) -> UnlabelledImages:
        """The images of ``data`` without its labels and class names.

        The image tensor is shared, not copied; nothing else of ``data`` is kept.

        Args:
            data: A labelled collection.
            name: Name of the result; default ``data.name``.

        Returns:
            ``UnlabelledImages`` with ``images`` ``[N, C, H, W]``, the same tensor as
            ``data.images``.
        """
        if not isinstance(data, LabelledImages):
            raise TypeError(f"expected LabelledImages, got {type(data).__name__}")
        return cls(data.images, data.name if name is None else name)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int | slice | Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Image ``index`` (uint8 ``[C, H, W]``), or the batch of images ``index`` selects
        (uint8 ``[n, C, H, W]``)."""
        if isinstance(index, Sequence) and not isinstance(index, (str, bytes)):
            index = torch.as_tensor(list(index), dtype=torch.long)
        return self.images[index]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        _, c, h, w = self.images.shape
        return int(c), int(h), int(w)

    def subset(
        self, indices: Sequence[int] | torch.Tensor, name: str | None = None
    ) -> UnlabelledImages:
        """The images ``indices``, in that order."""
        return UnlabelledImages(self[indices], self.name if name is None else name)

    def resized(self, size: int) -> UnlabelledImages:
        """A copy with every image resized to ``size x size`` (see :func:`resize_images`)."""
        if self.image_shape[1:] == (size, size):
            return self
        return UnlabelledImages(resize_images(self.images, size), self.name)
