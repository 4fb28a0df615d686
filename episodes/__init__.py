"""Episodic data for few-shot learning: episodes, seeded samplers, dataset readers.

This package depends on torch only (never on ``metatl``), so it can feed any learner.
"""

from episodes.data import LabelledImages, merge_by_class, resize_images
from episodes.episode import Episode
from episodes.sampler import (
    EpisodeDataset,
    EpisodeIndices,
    EpisodeSampler,
    EpisodeSpec,
    InfeasibleEpisodeError,
)

__all__ = [
    "Episode",
    "EpisodeDataset",
    "EpisodeIndices",
    "EpisodeSampler",
    "EpisodeSpec",
    "InfeasibleEpisodeError",
    "LabelledImages",
    "merge_by_class",
    "resize_images",
]
