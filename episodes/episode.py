"""Episode: one few-shot task, a frozen dataclass of tensors."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

__all__ = ["Episode"]


@dataclass(frozen=True)
class Episode:
    """A few-shot classification task: a labelled support set and a query set to predict.

    Labels are remapped to ``0 .. n_way - 1``; ``classes[k]`` is the dataset class id of
    episode label ``k``. Images may be uint8 (straight from the cache) or float (after a
    transform).

    An episode drawn from a dataset (:class:`~episodes.EpisodeDataset`) also records which
    dataset items its images are, so that per-image work (e.g. frozen features) can be
    computed once per item and shared across episodes; a hand-built episode may leave them
    ``None``.

    Attributes:
        support_x: ``[n_support, C, H, W]``.
        support_y: int64 ``[n_support]``, values in ``0 .. n_way - 1``.
        query_x: ``[n_query_total, C, H, W]``.
        query_y: int64 ``[n_query_total]``, values in ``0 .. n_way - 1``.
        classes: int64 ``[n_way]``, the dataset class id of each episode label.
        support_idx: int64 ``[n_support]``, the dataset index of each support image, or None.
        query_idx: int64 ``[n_query_total]``, the dataset index of each query image, or None.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: torch.Tensor
    support_idx: torch.Tensor | None = None
    query_idx: torch.Tensor | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.support_x.dim() != 4 or self.query_x.dim() != 4:
            problems.append(
                f"images must be [N, C, H, W]: support_x {tuple(self.support_x.shape)}, "
                f"query_x {tuple(self.query_x.shape)}"
            )
        elif self.support_x.shape[1:] != self.query_x.shape[1:]:
            problems.append(
                f"support and query images differ in shape: {tuple(self.support_x.shape[1:])} "
                f"vs {tuple(self.query_x.shape[1:])}"
            )
        if self.support_y.shape != (self.support_x.shape[0],):
            problems.append(
                f"support_y must be [{self.support_x.shape[0]}], got {tuple(self.support_y.shape)}"
            )
        if self.query_y.shape != (self.query_x.shape[0],):
            problems.append(
                f"query_y must be [{self.query_x.shape[0]}], got {tuple(self.query_y.shape)}"
            )
        if self.classes.dim() != 1:
            problems.append(f"classes must be [n_way], got {tuple(self.classes.shape)}")
        for name in ("support_y", "query_y", "classes"):
            if getattr(self, name).dtype != torch.int64:
                problems.append(f"{name} must be int64, got {getattr(self, name).dtype}")
        problems += self._index_problems()
        if problems:
            raise ValueError("invalid Episode: " + "; ".join(problems))

    def _index_problems(self) -> list[str]:
        """What is wrong with ``support_idx`` / ``query_idx`` (each optional)."""
        problems = []
        for name, images in (("support_idx", self.support_x), ("query_idx", self.query_x)):
            idx = getattr(self, name)
            if idx is None:
                continue
            if idx.shape != (images.shape[0],):
                problems.append(f"{name} must be [{images.shape[0]}], got {tuple(idx.shape)}")
            if idx.dtype != torch.int64:
                problems.append(f"{name} must be int64, got {idx.dtype}")
        return problems

    @property
    def n_way(self) -> int:
        return int(self.classes.shape[0])

    @property
    def n_support(self) -> int:
        return int(self.support_x.shape[0])

    @property
    def n_query(self) -> int:
        return int(self.query_x.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Episode:
        """A copy with every tensor on ``device`` (absent indices stay ``None``)."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                moved[f.name] = value.to(device, non_blocking=non_blocking)
        return replace(self, **moved)

    def map_images(self, fn) -> Episode:
        """A copy with ``fn`` applied to ``support_x`` and ``query_x`` (e.g. a transform);
        the indices still name the same dataset items."""
        return replace(self, support_x=fn(self.support_x), query_x=fn(self.query_x))
