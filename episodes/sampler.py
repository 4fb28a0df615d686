"""Seeded, feasibility-checked episode sampling.

Episode ``i`` of seed ``s`` is drawn from its own generator, seeded from ``(s, i)`` only, so it
is the same episode whichever process draws it, in whatever order, with any number of
DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from episodes.data import LabelledImages
from episodes.episode import Episode

__all__ = [
    "EpisodeDataset",
    "EpisodeIndices",
    "EpisodeSampler",
    "EpisodeSpec",
    "InfeasibleEpisodeError",
]

IntOrRange = int | tuple[int, int]


class InfeasibleEpisodeError(ValueError):
    """The requested episodes cannot be drawn from this data split."""


def _bounds(value: IntOrRange, name: str) -> tuple[int, int]:
    low, high = (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))
    if low < 1 or high < low:
        raise ValueError(f"EpisodeSpec.{name} must be >= 1 (or a range low <= high), got {value}")
    return low, high


@dataclass(frozen=True)
class EpisodeSpec:
    """The shape of episodes: fixed, or ranges drawn per episode (Meta-Dataset style).

    Attributes:
        n_way: Classes per episode, or an inclusive range ``(low, high)``.
        n_shot: Support images per class, or an inclusive range.
        n_query: Query images per class, or an inclusive range.
    """

    n_way: IntOrRange = 5
    n_shot: IntOrRange = 1
    n_query: IntOrRange = 15

    def __post_init__(self) -> None:
        for name in ("n_way", "n_shot", "n_query"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
            _bounds(getattr(self, name), name)
        if _bounds(self.n_way, "n_way")[0] < 2:
            raise ValueError(f"EpisodeSpec.n_way must be at least 2, got {self.n_way}")

    @property
    def max_way(self) -> int:
        return _bounds(self.n_way, "n_way")[1]

    @property
    def max_images_per_class(self) -> int:
        return _bounds(self.n_shot, "n_shot")[1] + _bounds(self.n_query, "n_query")[1]


@dataclass(frozen=True)
class EpisodeIndices:
    """Which dataset items form one episode.

    Attributes:
        classes: int64 ``[n_way]`` dataset class ids; episode label ``k`` is ``classes[k]``.
        support: int64 ``[n_way * n_shot]`` item indices, class-major.
        query: int64 ``[n_way * n_query]`` item indices, class-major.
        n_shot: Support items per class.
        n_query: Query items per class.
    """

    classes: torch.Tensor
    support: torch.Tensor
    query: torch.Tensor
    n_shot: int
    n_query: int

    @property
    def n_way(self) -> int:
        return int(self.classes.shape[0])

    def support_labels(self) -> torch.Tensor:
        return torch.arange(self.n_way).repeat_interleave(self.n_shot)

    def query_labels(self) -> torch.Tensor:
        return torch.arange(self.n_way).repeat_interleave(self.n_query)


class EpisodeSampler(Sampler[int]):
    """Draws episodes from labels alone, reproducibly from ``seed``.

    Iterating yields episode numbers ``0 .. num_episodes - 1`` (a ``torch`` ``Sampler``);
    :meth:`indices` turns an episode number into the items that form it. Feasibility is
    checked up front, so a bad spec fails at construction, not mid-training.

    Args:
        labels: int64 ``[N]`` class id of every item.
        spec: Episode shape.
        seed: Seed of the episode stream.
        num_episodes: Length of the stream.
        split: Name of the data split, for error messages.
        class_names: Optional names of classes, for error messages.

    Raises:
        InfeasibleEpisodeError: If ``n_way`` exceeds the number of classes or a class has
            fewer than ``n_shot + n_query`` items.
    """

    def __init__(
        self,
        labels: torch.Tensor,
        spec: EpisodeSpec,
        seed: int,
        num_episodes: int,
        split: str = "data",
        class_names: tuple[str, ...] | None = None,
    ) -> None:
        if num_episodes < 1:
            raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
        self.spec = spec
        self.seed = int(seed)
        self.num_episodes = int(num_episodes)
        self.split = split
        labels = torch.as_tensor(labels, dtype=torch.long)
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels)
        self._class_ids = torch.nonzero(counts, as_tuple=True)[0]
        self._counts = counts[self._class_ids]
        self._offsets = torch.cumsum(counts, 0)[self._class_ids] - self._counts
        self._items_by_class = order
        self._check_feasible(class_names)

    def _check_feasible(self, class_names: tuple[str, ...] | None) -> None:
        n_classes = int(self._class_ids.shape[0])
        if self.spec.max_way > n_classes:
            raise InfeasibleEpisodeError(
                f"split '{self.split}' has {n_classes} classes but episodes ask for "
                f"n_way={self.spec.max_way}: lower n_way or use a larger split"
            )
        need = self.spec.max_images_per_class
        smallest = int(torch.argmin(self._counts))
        have = int(self._counts[smallest])
        if have < need:
            class_id = int(self._class_ids[smallest])
            name = class_names[class_id] if class_names else str(class_id)
            raise InfeasibleEpisodeError(
                f"split '{self.split}': class '{name}' has {have} images but episodes need "
                f"n_shot + n_query = {_bounds(self.spec.n_shot, 'n_shot')[1]} + "
                f"{_bounds(self.spec.n_query, 'n_query')[1]} = {need}: lower n_shot or n_query"
            )

    def __len__(self) -> int:
        return self.num_episodes

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.num_episodes))

    def generator(self, episode: int) -> torch.Generator:
        """The generator of episode ``episode``: a function of ``(seed, episode)`` only."""
        state = np.random.SeedSequence([self.seed, int(episode)]).generate_state(2, np.uint64)
        return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))

    def indices(self, episode: int) -> EpisodeIndices:
        """The items of episode number ``episode``."""
        if not 0 <= episode < self.num_episodes:
            raise IndexError(f"episode {episode} out of range 0..{self.num_episodes - 1}")
        gen = self.generator(episode)
        n_way = _draw(self.spec.n_way, gen)
        n_shot = _draw(self.spec.n_shot, gen)
        n_query = _draw(self.spec.n_query, gen)
        chosen = torch.randperm(int(self._class_ids.shape[0]), generator=gen)[:n_way]
        per_class = n_shot + n_query
        # A random permutation of each chosen class's items: the first n_shot form the
        # support set, the next n_query the query set.
        ranks = torch.stack(
            [torch.randperm(int(self._counts[c]), generator=gen)[:per_class] for c in chosen]
        )
        items = self._items_by_class[self._offsets[chosen].unsqueeze(1) + ranks]
        return EpisodeIndices(
            classes=self._class_ids[chosen],
            support=items[:, :n_shot].reshape(-1),
            query=items[:, n_shot:].reshape(-1),
            n_shot=n_shot,
            n_query=n_query,
        )


def _draw(value: IntOrRange, gen: torch.Generator) -> int:
    low, high = (value, value) if isinstance(value, int) else value
    if low == high:
        return int(low)
    return int(torch.randint(low, high + 1, (1,), generator=gen))


class EpisodeDataset(Dataset[Episode]):
    """Map-style dataset of episodes: item ``i`` is episode ``i`` of the sampler's stream.

    Use with ``DataLoader(dataset, batch_size=None, num_workers=k)``: each episode is built
    where it is loaded, and is the same for any ``k``. Its ``support_idx`` and ``query_idx``
    are the items' indices in ``data``.

    Args:
        data: The images to draw from.
        sampler: Decides which items form each episode.
        transform: Applied to the uint8 support and query images (e.g. to float and
            normalise); ``None`` keeps uint8.
    """

    def __init__(
        self,
        data: LabelledImages,
        sampler: EpisodeSampler,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.data = data
        self.sampler = sampler
        self.transform = transform

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, episode: int) -> Episode:
        idx = self.sampler.indices(episode)
        support_x = self.data.images[idx.support]
        query_x = self.data.images[idx.query]
        if self.transform is not None:
            support_x, query_x = self.transform(support_x), self.transform(query_x)
        return Episode(
            support_x=support_x,
            support_y=idx.support_labels(),
            query_x=query_x,
            query_y=idx.query_labels(),
            classes=idx.classes,
            support_idx=idx.support,
            query_idx=idx.query,
        )

    @classmethod
    def from_spec(
        cls,
        data: LabelledImages,
        spec: EpisodeSpec,
        seed: int,
        num_episodes: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> EpisodeDataset:
        """Dataset of ``num_episodes`` episodes of shape ``spec`` drawn from ``data``."""
        sampler = EpisodeSampler(
            data.labels, spec, seed, num_episodes, split=data.name, class_names=data.class_names
        )
        return cls(data, sampler, transform)
