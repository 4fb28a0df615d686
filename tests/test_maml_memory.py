"""MAML's ``inner_memory="checkpoint"``: the stored loop's meta-gradient to round-off, BatchNorm
statistics updated once, dropout replayed, and a forward that keeps far less than the stored
loop's graph."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import nn

from episodes import Episode, EpisodeSpec, LabelledImages
from metatl.algorithms.maml import INNER_MEMORY, MAML, InnerMemory
from metatl.backbones import Backbone, InputSpec, create_backbone
from metatl.config import ConfigError, load_config
from metatl.config.load import CHOICES
from tests.conftest import train_briefly
from tests.test_maml import make_episode, make_learner, max_abs, max_abs_diff, meta_gradient

CASES = {
    "all, 1 step": {"inner_steps": 1},
    "all, 4 steps": {"inner_steps": 4},
    "running bn, 3 steps": {"inner_steps": 3, "bn": "running"},
    "top:2, running bn, learned head": {
        "inner_steps": 3,
        "adapt": "top:2",
        "bn": "running",
        "head": "learned",
        "n_way": 5,
    },
    "top:1, no trunk cache": {"inner_steps": 3, "adapt": "top:1", "cache_frozen_trunk": False},
    "head only": {"inner_steps": 3, "adapt": "head"},
    "meta-sgd": {"inner_steps": 3, "meta_sgd": True},
    "first order": {"inner_steps": 3, "first_order": True},
}


@pytest.mark.parametrize("settings", list(CASES.values()), ids=list(CASES))
def test_checkpointed_meta_gradient_equals_the_stored_one(settings: dict) -> None:
    episode = make_episode(dtype=torch.float64)
    stored = make_learner(torch.float64, **settings)
    recomputed = make_learner(torch.float64, inner_memory="checkpoint", **settings)
    expected = meta_gradient(stored, episode)
    got = meta_gradient(recomputed, episode)
    assert max_abs_diff(got, expected) < 1e-9
    assert max_abs(expected) > 1e-3  # not a vacuous comparison
    for name, buffer in stored.named_buffers():  # bn="running": committed alike, once
        assert torch.equal(buffer, recomputed.get_buffer(name)), name
    state = recomputed.adapt(episode.support_x, episode.support_y, episode.n_way)
    kinds = {type(w.grad_fn).__name__ for w in state.weights.values()}
    if settings.get("first_order"):
        assert "RecomputedStepBackward" not in kinds  # first order keeps no graph anyway
    else:
        assert kinds == {"RecomputedStepBackward"}


def test_running_statistics_are_updated_once_per_step_not_again_in_the_backward() -> None:
    episode = make_episode(dtype=torch.float64)
    learner = make_learner(torch.float64, inner_steps=3, bn="running", inner_memory="checkpoint")
    learner.train()
    state = learner.adapt(episode.support_x, episode.support_y, episode.n_way)
    tracked = "backbone.features.2.1.num_batches_tracked"
    before = {n: s.clone() for n, s in state.stats.items()}
    assert int(before[tracked]) == 3  # one update per inner step (adapt="all": no trunk)
    loss = nn.functional.cross_entropy(learner.predict(episode.query_x, state), episode.query_y)
    loss.backward()  # recomputes the three steps
    for name, value in state.stats.items():
        assert torch.equal(value, before[name]), name
    reference = make_learner(torch.float64, inner_steps=3, bn="running")
    expected = reference.adapt(episode.support_x, episode.support_y, episode.n_way)
    for name, value in expected.stats.items():
        torch.testing.assert_close(state.stats[name], value, rtol=0, atol=1e-12)


class _DropoutNet(Backbone):
    """Two conv blocks with dropout: the recomputation must draw the same masks."""

    def __init__(self) -> None:
        super().__init__()
        self.input_spec = InputSpec(1, 28, (0.0,), (1.0,))
        self.out_dim = 4
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.3)),
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Dropout(0.3), nn.AdaptiveAvgPool2d(1)),
        )

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


def _dropout_gradient(inner_memory: InnerMemory, episode: Episode) -> tuple[dict, torch.Tensor]:
    torch.manual_seed(0)
    learner = MAML(
        _DropoutNet(), n_way=5, head="learned", inner_steps=3, inner_memory=inner_memory
    ).double()
    torch.manual_seed(1)
    grads = meta_gradient(learner, episode)
    return grads, torch.get_rng_state()


def test_dropout_masks_are_replayed_and_the_global_generator_left_alone() -> None:
    episode = make_episode(dtype=torch.float64)
    stored, stored_rng = _dropout_gradient("store", episode)
    recomputed, recomputed_rng = _dropout_gradient("checkpoint", episode)
    assert max_abs_diff(recomputed, stored) < 1e-9
    assert max_abs(stored) > 1e-3
    assert torch.equal(recomputed_rng, stored_rng)  # the backward's replay forked the RNG


def test_bf16_autocast_is_replayed_in_the_backward() -> None:
    episode = make_episode()
    grads = []
    for inner_memory in INNER_MEMORY:
        learner = make_learner(inner_steps=2, inner_memory=inner_memory)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = learner.loss(episode)
        loss.backward()
        grads.append({n: p.grad for n, p in learner.named_parameters()})
    assert max_abs_diff(*grads) <= 1e-3 * max_abs(grads[0])


class _Held:
    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


def _kept_bytes(learner: MAML, episode: Episode) -> int:
    """Bytes of the distinct tensors the graph of ``loss`` keeps for the backward (saved
    tensors still referenced once ``loss`` has returned; each storage counted once)."""
    held: weakref.WeakSet[_Held] = weakref.WeakSet()

    def pack(t: torch.Tensor) -> _Held:
        holder = _Held(t)
        held.add(holder)
        return holder

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda h: h.tensor):
        loss, _ = learner.loss(episode)
    storages = {h.tensor.untyped_storage().data_ptr(): h.tensor.untyped_storage() for h in held}
    del loss
    return sum(s.nbytes() for s in storages.values())


def test_the_forward_keeps_inputs_not_graphs() -> None:
    episode = make_episode(query=1)
    saved = {
        (memory, steps): _kept_bytes(make_learner(inner_steps=steps, inner_memory=memory), episode)
        for memory in INNER_MEMORY
        for steps in (2, 8)
    }
    per_step = {m: (saved[(m, 8)] - saved[(m, 2)]) / 6 for m in INNER_MEMORY}
    weights = sum(p.numel() * 4 for p in make_learner().parameters())
    assert per_step["checkpoint"] < 1.5 * weights  # about one copy of the weights per step
    assert per_step["store"] > 5 * per_step["checkpoint"]


def test_inner_memory_is_validated_and_evaluation_is_unchanged() -> None:
    assert INNER_MEMORY == CHOICES["model.maml.inner_memory"] == ("store", "checkpoint")
    with pytest.raises(ValueError, match="inner_memory must be 'store' or 'checkpoint'"):
        make_learner(inner_memory="recompute")
    with pytest.raises(
        ConfigError, match=r"model.maml.inner_memory='keep' is not allowed; choose one of: store"
    ):
        load_config(None, ["model.maml.inner_memory=keep"])
    assert load_config(None, ["model.maml.inner_memory=checkpoint"]).model.maml.inner_memory == (
        "checkpoint"
    )
    episode = make_episode()
    learner = make_learner(inner_memory="checkpoint", test_inner_steps=3).eval()
    state = learner.adapt(episode.support_x, episode.support_y, episode.n_way)
    expected = make_learner(test_inner_steps=3).eval()
    reference = expected.adapt(episode.support_x, episode.support_y, episode.n_way)
    for name, weight in state.weights.items():
        assert weight.grad_fn is None
        torch.testing.assert_close(weight, reference.weights[name], rtol=0, atol=0)


def test_training_with_checkpointed_steps_follows_the_stored_run(patterns: LabelledImages) -> None:
    losses = {}
    for memory in INNER_MEMORY:
        torch.manual_seed(0)
        backbone = create_backbone("conv4", hidden=8)
        learner = MAML(backbone, inner_steps=3, inner_memory=memory)  # type: ignore[arg-type]
        losses[memory] = train_briefly(learner, patterns, EpisodeSpec(5, 1, 3), num_episodes=12)
    assert losses["checkpoint"] == pytest.approx(losses["store"], rel=1e-5, abs=1e-6)
    assert sum(losses["store"][-4:]) < sum(losses["store"][:4])  # and it learns
