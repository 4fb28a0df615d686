"""DomainShift: a labelled source domain and a target domain whose training images come
without labels — the data of unsupervised domain adaptation.

An adaptation method is handed ``source_train`` (labelled), ``source_val`` (labelled, for
label-free model selection) and ``target_train`` (an :class:`~episodes.UnlabelledImages`: it has
no labels to read); ``target_test`` (labelled) is for scoring and never reaches a method.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from episodes.data import LabelledImages
from episodes.unlabelled import UnlabelledImages

__all__ = ["DOMAIN_SPLITS", "DomainShift", "load_domain_shift"]

DOMAIN_SPLITS = ("source_train", "source_val", "target_train", "target_test")
"""The split names a domain-shift dataset registers (``digits``, ``kanji_domains``)."""


@dataclass(frozen=True)
class DomainShift:
    """The four parts of a domain-shift benchmark, the target's training labels withheld.

    Attributes:
        source_train: Labelled source images, uint8 ``[N_s, C, H, W]``.
        source_val: Labelled held-out source images (model selection without target labels).
        target_train: Target images for adaptation, uint8 ``[N_t, C, H, W]``, no labels.
        target_test: Labelled target images, for scoring only.
        name: The benchmark (e.g. ``"digits"``).
    """

    source_train: LabelledImages
    source_val: LabelledImages
    target_train: UnlabelledImages
    target_test: LabelledImages
    name: str = "domain-shift"

    def __post_init__(self) -> None:
        if not isinstance(self.target_train, UnlabelledImages):
            raise TypeError(
                f"{self.name}: target_train must be UnlabelledImages (the target's labels are "
                f"withheld), got {type(self.target_train).__name__}; use "
                "UnlabelledImages.from_labelled"
            )
        labelled = (self.source_train, self.source_val, self.target_test)
        for part in labelled:
            if part.class_names != self.source_train.class_names:
                raise ValueError(
                    f"{self.name}: {part.name} has classes {part.class_names[:5]}..., "
                    f"{self.source_train.name} {self.source_train.class_names[:5]}...: the "
                    "domains must share their classes, in the same label order"
                )
        shapes = {p.image_shape for p in (*labelled, self.target_train)}
        if len(shapes) > 1:
            raise ValueError(f"{self.name}: the parts hold images of shapes {sorted(shapes)}")

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes both domains share, indexed by label."""
        return self.source_train.class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_domain_shift(
    dataset: str, root: str | os.PathLike[str], image_size: int | None = None
) -> DomainShift:
    """The four :data:`DOMAIN_SPLITS` of a registered domain-shift dataset, the target's
    training images without their labels.

    Args:
        dataset: A registered dataset with those splits (``"digits"``, ``"kanji_domains"``).
        root: Where it is stored.
        image_size: Resize to ``image_size x image_size``; ``None`` keeps the stored size.

    Returns:
        A :class:`DomainShift` named ``dataset``.

    Raises:
        UnknownDatasetError, UnknownSplitError: From :func:`~episodes.datasets.load_dataset`.
    """
    from episodes.datasets.registry import load_dataset

    parts = {s: load_dataset(dataset, root, s, image_size) for s in DOMAIN_SPLITS}
    return DomainShift(
        source_train=parts["source_train"],
        source_val=parts["source_val"],
        target_train=UnlabelledImages.from_labelled(parts.pop("target_train")),
        target_test=parts["target_test"],
        name=dataset,
    )
