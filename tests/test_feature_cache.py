"""The evaluation feature cache: same accuracies as without it, one backbone pass per
distinct image, never a learner that adapts the backbone, never another backbone's rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from episodes import Episode, EpisodeDataset, EpisodeSpec, LabelledImages
from metatl.algorithms import MAML, FineTune, LinearProbe, ProtoNet
from metatl.backbones import Backbone, create_backbone
from metatl.training import ImageTransform
from metatl.training.evaluation import episode_logits, evaluate
from metatl.training.feature_cache import FeatureCache, frozen_extractor
from tests.conftest import make_pattern_images

SPEC = EpisodeSpec(n_way=5, n_shot=1, n_query=5)
EPISODES = 12


@pytest.fixture(scope="module")
def data() -> LabelledImages:
    return make_pattern_images(n_classes=10, per_class=12, seed=3)


def make_backbone(data: LabelledImages, seed: int) -> Backbone:
    """A seeded Conv-4 whose BatchNorm running statistics come from the data (so that eval
    and training mode give different features)."""
    torch.manual_seed(seed)
    backbone = create_backbone("conv4", hidden=8)
    with torch.no_grad():
        backbone.train()(ImageTransform(backbone.input_spec)(data.images[:64]))
    return backbone.eval()


def count_images(module: nn.Module) -> list[int]:
    """Batch sizes of every forward of ``module`` (eval-mode views share its hooks)."""
    sizes: list[int] = []
    module.register_forward_hook(lambda _m, args, _out: sizes.append(int(args[0].shape[0])))
    return sizes


def distinct_images(data: LabelledImages, seed: int) -> int:
    dataset = EpisodeDataset.from_spec(data, SPEC, seed, EPISODES)
    items = [torch.cat([e.support_idx, e.query_idx]) for e in dataset]
    return int(torch.unique(torch.cat(items)).numel())


def run(learners: dict, data: LabelledImages, cached: bool, **kw) -> dict:
    transform = ImageTransform(next(iter(learners.values())).backbone.input_spec)
    results = evaluate(learners, data, SPEC, EPISODES, 7, transform, feature_cache=cached, **kw)
    return {name: r.accuracies for name, r in results.items()}


# ---- episodes know their items -------------------------------------------------------------


def test_sampled_episodes_carry_the_dataset_indices_of_their_images(data) -> None:
    episode = EpisodeDataset.from_spec(data, SPEC, seed=1, num_episodes=3)[2]
    assert torch.equal(episode.support_x, data.images[episode.support_idx])
    assert torch.equal(episode.query_x, data.images[episode.query_idx])
    assert torch.equal(data.labels[episode.support_idx], episode.classes[episode.support_y])
    moved = episode.map_images(lambda x: x.float()).to("cpu")
    assert torch.equal(moved.query_idx, episode.query_idx)


def test_hand_built_episodes_need_no_indices_and_bad_ones_are_refused() -> None:
    x, y = torch.zeros(4, 1, 8, 8), torch.tensor([0, 0, 1, 1])
    episode = Episode(x, y, x, y, torch.arange(2)).to("cpu")
    assert episode.support_idx is None and episode.query_idx is None
    with pytest.raises(ValueError, match=r"support_idx must be \[4\]"):
        Episode(x, y, x, y, torch.arange(2), support_idx=torch.arange(3))
    with pytest.raises(ValueError, match="query_idx must be int64"):
        Episode(x, y, x, y, torch.arange(2), query_idx=torch.arange(4, dtype=torch.int32))


# ---- same numbers ----------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cached_accuracies_equal_uncached(data, precision: str) -> None:
    backbone = make_backbone(data, seed=0)
    learners = {
        "protonet": ProtoNet(backbone),
        "cosine": ProtoNet(backbone, distance="cosine"),
        "linear": LinearProbe(backbone, max_iter=30),
        "center_l2": LinearProbe(backbone, normalize="center_l2", max_iter=30),
    }
    cached = run(learners, data, cached=True, precision=precision)
    assert cached == run(learners, data, cached=False, precision=precision)
    assert len(set(cached["protonet"])) > 1  # not trivially perfect (or hopeless)


def test_cached_logits_match_uncached_within_1e6(data) -> None:
    backbone = make_backbone(data, seed=0)
    transform = ImageTransform(backbone.input_spec)
    cache = FeatureCache(data.images)
    for learner in (ProtoNet(backbone), LinearProbe(backbone, max_iter=30)):
        for raw in EpisodeDataset.from_spec(data, SPEC, seed=5, num_episodes=4):
            with torch.no_grad():
                cached = episode_logits(learner, raw, transform, "cpu", cache)
                plain = episode_logits(learner, raw, transform, "cpu", None)
            torch.testing.assert_close(cached, plain, rtol=1e-6, atol=1e-6)
    assert cache.computed <= len(data)


# ---- one backbone pass per distinct image ----------------------------------------------------


def test_backbone_runs_once_per_distinct_image_across_episodes_and_methods(data) -> None:
    backbone = make_backbone(data, seed=0)
    sizes = count_images(backbone)
    learners = {"protonet": ProtoNet(backbone), "linear": LinearProbe(backbone, max_iter=10)}
    run(learners, data, cached=True)
    assert sum(sizes) == distinct_images(data, seed=7) < EPISODES * 30
    assert len(sizes) <= EPISODES  # at most one batch per episode (the new images)
    sizes.clear()
    run(learners, data, cached=False)
    # ProtoNet: one pass per episode; the probe: one for support, one for query.
    assert sum(sizes) == 2 * EPISODES * 30 and len(sizes) == 3 * EPISODES


# ---- who is served ---------------------------------------------------------------------------


def test_learners_that_adapt_the_backbone_are_never_served(data, monkeypatch) -> None:
    backbone = make_backbone(data, seed=0)
    learners = {
        "protonet": ProtoNet(backbone),
        "finetune": FineTune(backbone, n_blocks=1, steps=2),
        "maml": MAML(backbone, test_inner_steps=1, inner_lr=0.1),
    }
    assert frozen_extractor(learners["finetune"]) is None
    assert frozen_extractor(learners["maml"]) is None
    served: list[tuple[str, bool]] = []
    original = FeatureCache.extractor_for

    def spy(self, learner, transform):
        extractor = original(self, learner, transform)
        served.append((type(learner).__name__, extractor is not None))
        return extractor

    monkeypatch.setattr(FeatureCache, "extractor_for", spy)
    cached = run(learners, data, cached=True)
    assert sorted(set(served)) == [("FineTune", False), ("MAML", False), ("ProtoNet", True)]
    monkeypatch.undo()
    assert cached == run(learners, data, cached=False)


def test_training_mode_and_overriding_subclasses_are_not_served(data) -> None:
    backbone = make_backbone(data, seed=0)
    protonet = ProtoNet(backbone).eval()
    assert frozen_extractor(protonet) is backbone
    assert frozen_extractor(protonet.train()) is None  # BatchNorm on episode statistics
    protonet.eval()
    backbone.features[0].train()
    assert frozen_extractor(protonet) is None
    backbone.eval()

    class Shifted(ProtoNet):
        def forward(self, episode: Episode) -> torch.Tensor:
            return super().forward(episode) + 1.0

    class Declared(Shifted):
        def frozen_feature_extractor(self) -> nn.Module | None:
            return self.backbone

    assert frozen_extractor(Shifted(backbone).eval()) is None
    assert frozen_extractor(Declared(backbone).eval()) is backbone


def test_patched_prediction_methods_are_not_bypassed(data, monkeypatch) -> None:
    """A spy on ``forward`` (on the class or the instance) still sees every episode."""
    backbone = make_backbone(data, seed=0)
    seen = []
    forward = ProtoNet.forward

    def spy(self, episode):
        seen.append(episode.n_query)
        return forward(self, episode)

    monkeypatch.setattr(ProtoNet, "forward", spy)
    assert frozen_extractor(ProtoNet(backbone).eval()) is None
    run({"protonet": ProtoNet(backbone)}, data, cached=True)
    assert len(seen) == EPISODES
    monkeypatch.undo()
    probe = LinearProbe(backbone)
    assert frozen_extractor(probe) is backbone
    probe.features = lambda x: backbone(x)  # type: ignore[method-assign]
    assert frozen_extractor(probe) is None
    assert frozen_extractor(LinearProbe(backbone.train())) is backbone  # runs it in eval mode


# ---- one backbone's rows never serve another ---------------------------------------------------


def test_a_cache_for_one_backbone_never_serves_another(data) -> None:
    first, second = make_backbone(data, seed=0), make_backbone(data, seed=1)
    transform = ImageTransform(first.input_spec)
    cache = FeatureCache(data.images)
    idx = torch.tensor([3, 1, 4, 1, 5])
    with torch.no_grad():
        expected = [b(transform(data.images[idx])) for b in (first, second)]
        got = [cache.features(b, transform, idx) for b in (first, second)]
        again = cache.features(first, transform, idx)
    assert len(cache) == 2 and cache.computed == 2 * 4
    assert not torch.allclose(expected[0], expected[1])
    for want, have in zip(expected, got, strict=True):
        torch.testing.assert_close(have, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(again, got[0])

    learners = {"a": ProtoNet(first), "b": ProtoNet(second), "a_linear": LinearProbe(first)}
    together = run(learners, data, cached=True)
    alone = {
        name: run({name: learner}, data, cached=False)[name] for name, learner in learners.items()
    }
    assert together == alone


def test_changed_weights_are_recomputed(data) -> None:
    backbone = make_backbone(data, seed=0)
    transform = ImageTransform(backbone.input_spec)
    cache = FeatureCache(data.images)
    idx = torch.arange(6)
    with torch.no_grad():
        before = cache.features(backbone, transform, idx)
        backbone.features[0][0].weight.mul_(2.0)
        after = cache.features(backbone, transform, idx)
        torch.testing.assert_close(after, backbone(transform(data.images[idx])))
    assert not torch.allclose(before, after) and cache.computed == 6


def test_extractors_beyond_the_budget_are_evaluated_uncached(data) -> None:
    backbone = make_backbone(data, seed=0)
    pixels = create_backbone("pixels", in_channels=1, image_size=28)
    transform = ImageTransform(backbone.input_spec)
    small = len(data) * backbone.out_dim * 4  # room for the Conv-4 features only
    cache = FeatureCache(data.images, max_bytes=small)
    assert cache.extractor_for(ProtoNet(backbone).eval(), transform) is backbone
    assert cache.extractor_for(ProtoNet(pixels).eval(), transform) is None
    assert cache.extractor_for(LinearProbe(backbone), transform) is backbone
