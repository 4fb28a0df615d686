"""Episodic data for few-shot learning: episodes, seeded samplers, dataset readers.

This package depends on torch only (never on ``metatl``), so it can feed any learner.
"""

from episodes.data import LabelledImages, merge_by_class, resize_images
from episodes.domains import DomainShift, load_domain_shift
from episodes.episode import Episode
from episodes.sampler import (
    EpisodeDataset,
    EpisodeIndices,
    EpisodeSampler,
    EpisodeSpec,
    InfeasibleEpisodeError,
)
from episodes.unlabelled import UnlabelledImages

__all__ = [
    "DomainShift",
    "Episode",
    "EpisodeDataset",
    "EpisodeIndices",
    "EpisodeSampler",
    "EpisodeSpec",
    "InfeasibleEpisodeError",
    "LabelledImages",
    "UnlabelledImages",
    "load_domain_shift",
    "merge_by_class",
    "resize_images",
]
