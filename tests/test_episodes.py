"""Episode, EpisodeSpec, EpisodeSampler and EpisodeDataset."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from episodes import (
    Episode,
    EpisodeDataset,
    EpisodeSampler,
    EpisodeSpec,
    InfeasibleEpisodeError,
    LabelledImages,
)


def episode_key(ep: Episode) -> tuple:
    return (
        ep.classes.tolist(),
        ep.support_x.sum((1, 2, 3)).tolist(),
        ep.query_x.sum((1, 2, 3)).tolist(),
    )


def test_episode_shapes_and_labels(patterns: LabelledImages) -> None:
    ds = EpisodeDataset.from_spec(patterns, EpisodeSpec(5, 2, 3), seed=0, num_episodes=4)
    ep = ds[0]
    assert ep.support_x.shape == (10, 1, 28, 28) and ep.query_x.shape == (15, 1, 28, 28)
    assert ep.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert ep.query_y.tolist() == [k for k in range(5) for _ in range(3)]
    assert ep.n_way == 5 and ep.classes.unique().numel() == 5
    # Every image of episode label k comes from dataset class classes[k]; none repeats.
    idx = ds.sampler.indices(0)
    assert (patterns.labels[idx.support] == ep.classes[ep.support_y]).all()
    assert (patterns.labels[idx.query] == ep.classes[ep.query_y]).all()
    assert torch.cat([idx.support, idx.query]).unique().numel() == 25


def test_episode_validates_shapes() -> None:
    x = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ValueError, match="support_y must be \\[4\\]"):
        Episode(
            x,
            torch.zeros(3, dtype=torch.long),
            x,
            torch.zeros(4, dtype=torch.long),
            torch.arange(2),
        )
    with pytest.raises(ValueError, match="differ in shape"):
        Episode(
            x,
            torch.zeros(4, dtype=torch.long),
            torch.zeros(4, 3, 8, 8),
            torch.zeros(4, dtype=torch.long),
            torch.arange(2),
        )


def test_episode_to_device_keeps_values(patterns: LabelledImages) -> None:
    ep = EpisodeDataset.from_spec(patterns, EpisodeSpec(3, 1, 1), 0, 1)[0]
    moved = ep.to("cpu")
    assert torch.equal(moved.query_x, ep.query_x) and moved is not ep


def test_same_seed_same_episodes_and_other_seed_differs(patterns: LabelledImages) -> None:
    spec = EpisodeSpec(5, 1, 5)
    a = EpisodeDataset.from_spec(patterns, spec, seed=7, num_episodes=20)
    b = EpisodeDataset.from_spec(patterns, spec, seed=7, num_episodes=20)
    c = EpisodeDataset.from_spec(patterns, spec, seed=8, num_episodes=20)
    assert [episode_key(a[i]) for i in range(20)] == [episode_key(b[i]) for i in range(20)]
    assert [episode_key(a[i]) for i in range(20)] != [episode_key(c[i]) for i in range(20)]
    # Episode i does not depend on which episodes were drawn before it.
    assert episode_key(a[13]) == episode_key(b[13])


def test_episodes_identical_with_dataloader_workers(patterns: LabelledImages) -> None:
    ds = EpisodeDataset.from_spec(patterns, EpisodeSpec(5, 2, 4), seed=3, num_episodes=12)
    direct = [episode_key(ds[i]) for i in range(12)]
    for workers in (0, 2):
        loaded = [episode_key(ep) for ep in DataLoader(ds, batch_size=None, num_workers=workers)]
        assert loaded == direct, f"episodes differ with {workers} workers"


def test_classes_are_drawn_uniformly(patterns: LabelledImages) -> None:
    sampler = EpisodeSampler(patterns.labels, EpisodeSpec(5, 1, 1), seed=0, num_episodes=3000)
    counts = torch.bincount(
        torch.cat([sampler.indices(i).classes for i in range(3000)]), minlength=30
    ).float()
    expected = 3000 * 5 / 30
    assert counts.min() > 0.8 * expected and counts.max() < 1.2 * expected


def test_variable_way_and_shot_ranges(patterns: LabelledImages) -> None:
    ds = EpisodeDataset.from_spec(
        patterns, EpisodeSpec((3, 7), (1, 4), 2), seed=0, num_episodes=200
    )
    ways, shots = set(), set()
    for i in range(200):
        ep = ds[i]
        shot = ep.n_support // ep.n_way
        assert ep.n_support == ep.n_way * shot and ep.n_query == ep.n_way * 2
        ways.add(ep.n_way)
        shots.add(shot)
    assert ways == {3, 4, 5, 6, 7} and shots == {1, 2, 3, 4}


def test_too_many_ways_names_split_and_counts(patterns: LabelledImages) -> None:
    with pytest.raises(InfeasibleEpisodeError, match="split 'patterns' has 30 classes .*n_way=31"):
        EpisodeDataset.from_spec(patterns, EpisodeSpec(31, 1, 1), 0, 1)


def test_too_many_shots_names_class_and_counts() -> None:
    labels = torch.tensor([0] * 10 + [1] * 4 + [2] * 10)
    data = LabelledImages(
        torch.zeros(24, 1, 4, 4, dtype=torch.uint8), labels, ("a", "b", "c"), name="glyphs/val"
    )
    with pytest.raises(
        InfeasibleEpisodeError, match="split 'glyphs/val': class 'b' has 4 images .* 1 \\+ 5 = 6"
    ):
        EpisodeDataset.from_spec(data, EpisodeSpec(2, 1, 5), 0, 1)


def test_bad_spec_is_rejected() -> None:
    with pytest.raises(ValueError, match="n_shot"):
        EpisodeSpec(5, 0, 1)
    with pytest.raises(ValueError, match="at least 2"):
        EpisodeSpec(1, 1, 1)


def test_transform_is_applied(patterns: LabelledImages) -> None:
    ds = EpisodeDataset.from_spec(
        patterns, EpisodeSpec(2, 1, 1), 0, 1, transform=lambda x: x.float() / 255
    )
    ep = ds[0]
    assert ep.support_x.dtype == torch.float32 and ep.support_x.max() <= 1.0


def test_labelled_images_select_and_resize(patterns: LabelledImages) -> None:
    sub = patterns.select_classes([4, 2])
    assert sub.class_names == ("class004", "class002") and len(sub) == 40
    assert torch.equal(sub.images[sub.labels == 0], patterns.images[80:100])
    small = patterns.resized(14)
    assert small.image_shape == (1, 14, 14)
    # Integer-factor resizing is exact 2x2 averaging.
    expected = patterns.images[:1, :, :2, :2].float().mean().round()
    assert small.images[0, 0, 0, 0] == expected
    with pytest.raises(ValueError, match="labels must lie in"):
        LabelledImages(patterns.images, patterns.labels, ("only-one",))
