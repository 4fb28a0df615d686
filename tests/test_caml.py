"""CAML, the model-based learner: a transformer over the episode's (feature, label) tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import metatl
from episodes import Episode
from metatl.algorithms import CAML
from metatl.algorithms.caml import elmes
from metatl.config import ConfigError, load_config
from metatl.evaluate import main as evaluate_main


class Identity(nn.Module):
    """A "backbone" whose features are the inputs: ``[n, 16, 1, 1]`` -> ``[n, 16]``."""

    out_dim = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def cluster_episode(way: int, shot: int, query: int, gen: torch.Generator) -> Episode:
    """Classes are fresh Gaussian clusters in 16 dimensions (as ``[n, 16, 1, 1]`` "images"):
    only the support set tells them apart."""
    centres = 2 * torch.randn(way, 16, generator=gen)
    support_y = torch.arange(way).repeat_interleave(shot)
    query_y = torch.arange(way).repeat_interleave(query)
    noise = 0.3 * torch.randn(len(support_y) + len(query_y), 16, 1, 1, generator=gen)
    centres = centres[:, :, None, None]
    return Episode(
        support_x=centres[support_y] + noise[: len(support_y)],
        support_y=support_y,
        query_x=centres[query_y] + noise[len(support_y) :],
        query_y=query_y,
        classes=torch.arange(way),
    )


def small_caml(**settings: object) -> CAML:
    torch.manual_seed(0)
    return CAML(Identity(), **{"dim": 64, "max_way": 8, "heads": 4, "layers": 1, **settings})


def test_elmes_vectors_are_unit_length_and_equiangular() -> None:
    vectors = elmes(5)
    gram = vectors @ vectors.T
    assert torch.allclose(gram.diagonal(), torch.ones(5))
    off_diagonal = gram[~torch.eye(5, dtype=torch.bool)]
    assert torch.allclose(off_diagonal, torch.full_like(off_diagonal, -1 / 4), atol=1e-6)
    assert torch.allclose(vectors.sum(0), torch.zeros(5), atol=1e-6)  # centred
    with pytest.raises(ValueError, match="at least 2"):
        elmes(1)


def test_a_query_is_classified_from_the_support_alone() -> None:
    learner = small_caml().eval()
    episode = cluster_episode(5, 2, 3, torch.Generator().manual_seed(1))
    state = learner.adapt(episode.support_x, episode.support_y, 5)
    together = learner.predict(episode.query_x, state)
    alone = torch.cat([learner.predict(q[None], state) for q in episode.query_x])
    assert together.shape == (15, 5)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    # nor does the order of the support set matter: attention is over a set
    order = torch.randperm(10, generator=torch.Generator().manual_seed(2))
    shuffled = learner.adapt(episode.support_x[order], episode.support_y[order], 5)
    torch.testing.assert_close(learner.predict(episode.query_x, shuffled), together)


def test_training_draws_label_slots_evaluation_uses_the_first() -> None:
    learner = small_caml()
    episode = cluster_episode(3, 1, 1, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    drawn = {
        tuple(learner.adapt(episode.support_x, episode.support_y, 3).slots.tolist())
        for _ in range(20)
    }
    assert len(drawn) > 5 and all(len(set(s)) == 3 and max(s) < 8 for s in drawn)
    learner.eval()
    assert learner.adapt(episode.support_x, episode.support_y, 3).slots.tolist() == [0, 1, 2]


def test_it_learns_to_classify_new_classes_in_context_including_an_unseen_way() -> None:
    learner = small_caml()
    optimiser = torch.optim.Adam(learner.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(700):  # in-context learning starts after a plateau of ~400 steps here
        loss, _ = learner.loss(cluster_episode(5, 1, 5, gen))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    learner.eval()
    test_gen = torch.Generator().manual_seed(99)

    def accuracy(way: int) -> float:
        episodes = [cluster_episode(way, 1, 5, test_gen) for _ in range(20)]
        with torch.no_grad():
            hits = [(learner(e).argmax(1) == e.query_y).float().mean() for e in episodes]
        return float(torch.stack(hits).mean())

    assert accuracy(5) > 0.9  # the trained way; chance is 0.2
    assert accuracy(8) > 0.9  # a way it never saw (all 8 slots, trained 5 at a time); chance 0.125


def test_a_frozen_backbone_is_not_trained() -> None:
    backbone = metatl.create_backbone("conv4", in_channels=1)
    learner = CAML(backbone, dim=64, max_way=8, freeze_backbone=True)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.rand(12, 1, 28, 28, generator=gen), torch.arange(4).repeat(3)
    episode = Episode(images[:4], labels[:4], images[4:], labels[4:], torch.arange(4))
    loss, _ = learner.train().loss(episode)
    loss.backward()
    assert all(p.grad is None for p in backbone.parameters())
    assert learner.head.weight.grad is not None
    for key, value in backbone.state_dict().items():  # BatchNorm statistics too
        assert torch.equal(value, before[key]), key
    assert learner.frozen_feature_extractor() is backbone  # cached features are exact


def test_cached_features_give_the_learner_s_own_logits() -> None:
    learner = CAML(metatl.create_backbone("conv4", in_channels=1), dim=64, max_way=8)
    assert learner.frozen_feature_extractor() is None  # training: BatchNorm sees the episode
    learner.eval()
    gen = torch.Generator().manual_seed(0)
    support, query = (
        torch.rand(6, 1, 28, 28, generator=gen),
        torch.rand(9, 1, 28, 28, generator=gen),
    )
    support_y = torch.tensor([0, 1, 2, 0, 1, 2])
    episode = Episode(support, support_y, query, torch.zeros(9, dtype=torch.long), torch.arange(3))
    extractor = learner.frozen_feature_extractor()
    assert extractor is learner.backbone
    with torch.no_grad():
        state = learner.adapt_features(extractor(support), support_y, 3)
        torch.testing.assert_close(
            learner.predict_features(extractor(query), state), learner(episode)
        )


def test_bad_sizes_are_refused_with_the_setting_to_change() -> None:
    with pytest.raises(ValueError, match="cannot classify 9-way.*max_way >= 9"):
        small_caml().eval().adapt(torch.zeros(9, 16, 1, 1), torch.arange(9), 9)
    with pytest.raises(ValueError, match="make dim larger than max_way"):
        CAML(Identity(), dim=8, max_way=8)
    with pytest.raises(ValueError, match="must divide dim"):
        CAML(Identity(), dim=66, max_way=8, heads=4)
    caml = ["model.algorithm=caml"]
    with pytest.raises(ConfigError, match=r"max_way=32 label slots cannot classify 40-way"):
        load_config(None, [*caml, "test.way=40"])
    with pytest.raises(ConfigError, match=r"model.caml.heads=3 must divide model.caml.dim=128"):
        load_config(None, [*caml, "model.caml.heads=3"])
    with pytest.raises(ConfigError, match="make dim larger than max_way"):
        load_config(None, [*caml, "model.caml.dim=32"])
    load_config(None, ["test.way=40"])  # only CAML has label slots


def test_trains_with_the_run_loop_and_reloads_as_it_was(
    folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = metatl.fit(
        [
            "data.dataset=image_folder",
            f"data.root={folder_dataset}",
            f"out_dir={tmp_path}",
            "name=caml",
            "model.algorithm=caml",
            "model.caml.dim=48",
            "model.caml.max_way=8",
            "episodes.way=5",
            "train.steps=3",
            "train.val_every=3",
            "train.val_episodes=2",
            "test.episodes=2",
            "test.shots=[1]",
            "tracking.wandb.mode=disabled",
        ]
    )
    assert set(run.test["5-way 1-shot"]) == {"caml", "pixels"}
    loaded = metatl.load_learner(run.run_dir)
    assert isinstance(loaded.learner, CAML) and loaded.learner.max_way == 8
    test = metatl.load_dataset("image_folder", folder_dataset, "test", image_size=28)
    first = metatl.score(loaded.learner, test, way=5, shot=1, query=3, episodes=4, seed=1)
    again = metatl.load_learner(run.run_dir).learner
    second = metatl.score(again, test, way=5, shot=1, query=3, episodes=4, seed=1)
    assert first.accuracies == second.accuracies
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(run.run_dir), "model.caml.dim=64"]) == 2
    assert "model.caml.dim=64 cannot change on a trained checkpoint" in capsys.readouterr().err
