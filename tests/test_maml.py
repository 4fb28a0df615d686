"""The MAML family against a hand-written autograd reference and higher, and its contract.

``python -m tests.test_maml`` prints the gradient-agreement table.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from episodes import Episode, EpisodeSpec, LabelledImages
from metatl.algorithms.maml import ANIL, FOMAML, MAML, MAML_VARIANTS, MetaSGD
from metatl.backbones import Backbone, InputSpec, create_backbone
from tests.conftest import train_briefly

HIDDEN, WAY, SIZE, LR = 8, 5, 28, 0.4


def make_episode(
    n_way: int = WAY, shot: int = 1, query: int = 2, dtype=torch.float32, seed: int = 0
) -> Episode:
    gen = torch.Generator().manual_seed(seed)
    return Episode(
        torch.randn(n_way * shot, 1, SIZE, SIZE, generator=gen).to(dtype),
        torch.arange(n_way).repeat_interleave(shot),
        torch.randn(n_way * query, 1, SIZE, SIZE, generator=gen).to(dtype),
        torch.arange(n_way).repeat(query),
        torch.arange(n_way),
    )


def make_learner(dtype=torch.float32, seed: int = 0, **kwargs) -> MAML:
    torch.manual_seed(seed)
    kwargs.setdefault("inner_lr", LR)
    return MAML(create_backbone("conv4", hidden=HIDDEN), **kwargs).to(dtype)


def meta_gradient(learner: MAML, episode: Episode) -> dict[str, torch.Tensor]:
    learner.train()
    learner.zero_grad(set_to_none=True)
    learner.loss(episode)[0].backward()
    return {n: p.grad for n, p in learner.named_parameters() if p.grad is not None}


# --- the hand-written reference: explicit tensors, F.conv2d / F.batch_norm, no torch.func -----


def reference_forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Conv-4 (conv, transductive BatchNorm, ReLU, max-pool) x 4, flatten, linear head."""
    for i in range(4):
        weight, bias, gamma, beta = params[4 * i : 4 * i + 4]
        x = F.conv2d(x, weight, bias, padding=1)
        x = F.batch_norm(x, None, None, gamma, beta, training=True, eps=1e-5)
        x = F.max_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), params[16], params[17])


def reference_meta_gradient(
    learner: MAML, episode: Episode, steps: int, first_order: bool, n_adapted: int = 18
) -> dict[str, torch.Tensor]:
    """MAML by hand on copies of ``learner``'s parameters; the last ``n_adapted`` adapt."""
    names = [n for n, _ in learner.backbone.named_parameters()]
    meta = [p.detach().clone().requires_grad_() for p in learner.backbone.parameters()]
    if learner.head is not None:
        meta += [learner.head.weight.detach().clone().requires_grad_()]
        meta += [learner.head.bias.detach().clone().requires_grad_()]
        head: list[torch.Tensor] = []
    else:
        dtype = meta[0].dtype
        head = [
            torch.zeros(episode.n_way, HIDDEN, dtype=dtype, requires_grad=True),
            torch.zeros(episode.n_way, dtype=dtype, requires_grad=True),
        ]
    fast = meta + head
    adapted = list(range(18 - n_adapted, 18))
    for _ in range(steps):
        loss = F.cross_entropy(reference_forward(fast, episode.support_x), episode.support_y)
        grads = torch.autograd.grad(loss, [fast[i] for i in adapted], create_graph=not first_order)
        for i, g in zip(adapted, grads, strict=True):
            fast[i] = fast[i] - LR * (g.detach() if first_order else g)
    loss = F.cross_entropy(reference_forward(fast, episode.query_x), episode.query_y)
    grads = torch.autograd.grad(loss, meta)
    keys = [f"backbone.{n}" for n in names] + (["head.weight", "head.bias"] if not head else [])
    return dict(zip(keys, grads, strict=True))


class _Net(nn.Module):
    def __init__(self, learner: MAML) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(learner.backbone)
        self.head = copy.deepcopy(learner.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def higher_meta_gradient(
    learner: MAML, episode: Episode, steps: int, first_order: bool
) -> dict[str, torch.Tensor]:
    """The same meta-gradient with higher's ``innerloop_ctx`` (learned head, all adapt)."""
    higher = pytest.importorskip("higher")
    net = _Net(learner).train()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    callback = (lambda grads: [g.detach() for g in grads]) if first_order else None
    with higher.innerloop_ctx(net, opt, copy_initial_weights=False) as (fnet, diffopt):
        for _ in range(steps):
            support_loss = F.cross_entropy(fnet(episode.support_x), episode.support_y)
            diffopt.step(support_loss, grad_callback=callback)
        F.cross_entropy(fnet(episode.query_x), episode.query_y).backward()
    return {n: p.grad for n, p in net.named_parameters()}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def max_abs(grads: dict[str, torch.Tensor]) -> float:
    return max(float(g.abs().max()) for g in grads.values())


GRADIENT_CASES = [(s, fo) for s in (1, 5) for fo in (False, True)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize(("steps", "first_order"), GRADIENT_CASES, ids=lambda v: str(v))
def test_meta_gradient_matches_hand_written_and_higher(
    steps: int, first_order: bool, dtype: torch.dtype
) -> None:
    kw = {"inner_steps": steps, "first_order": first_order, "head": "learned", "n_way": WAY}
    learner = make_learner(dtype, **kw)
    episode = make_episode(dtype=dtype)
    ours = meta_gradient(learner, episode)
    hand = reference_meta_gradient(learner, episode, steps, first_order)
    other = higher_meta_gradient(learner, episode, steps, first_order)
    tol = 1e-9 if dtype == torch.float64 else 1e-5 * max(1.0, max_abs(hand))
    assert max_abs_diff(ours, hand) < tol
    assert max_abs_diff(ours, other) < tol
    assert max_abs(hand) > 1e-3  # a vacuous comparison would pass too


@pytest.mark.parametrize("first_order", [False, True])
def test_zero_head_meta_gradient_matches_hand_written(first_order: bool) -> None:
    learner = make_learner(torch.float64, inner_steps=3, first_order=first_order)
    episode = make_episode(dtype=torch.float64)
    hand = reference_meta_gradient(learner, episode, 3, first_order)
    assert max_abs_diff(meta_gradient(learner, episode), hand) < 1e-9


@pytest.mark.parametrize(("adapt", "n_adapted"), [("head", 2), ("top:1", 6), ("top:3", 14)])
@pytest.mark.parametrize("first_order", [False, True])
def test_frozen_trunk_cache_changes_nothing(adapt: str, n_adapted: int, first_order: bool) -> None:
    kw = {"adapt": adapt, "inner_steps": 2, "first_order": first_order}
    episode = make_episode(dtype=torch.float64)
    cached = meta_gradient(make_learner(torch.float64, **kw), episode)
    learner = make_learner(torch.float64, cache_frozen_trunk=False, **kw)
    uncached = meta_gradient(learner, episode)
    hand = reference_meta_gradient(learner, episode, 2, first_order, n_adapted=n_adapted)
    assert len(learner.adapted_parameter_names()) == n_adapted
    assert max_abs_diff(cached, uncached) < 1e-12
    assert max_abs_diff(cached, hand) < 1e-9
    assert float(cached["backbone.features.0.0.weight"].abs().max()) > 0  # trunk is meta-learned


@pytest.mark.parametrize("bn", ["transductive", "running"])
def test_buffers_never_mutated_by_adapt_or_predict(bn: str) -> None:
    learner = make_learner(bn=bn, inner_steps=2, test_inner_steps=3, adapt="top:2")
    before = {n: b.clone() for n, b in learner.named_buffers()}
    episode = make_episode()
    for training in (True, False):
        learner.train(training)
        state = learner.adapt(episode.support_x, episode.support_y, episode.n_way)
        learner.predict(episode.query_x, state)
        for name, buf in learner.named_buffers():
            assert torch.equal(buf, before[name]), name
    assert len(state.stats) == (0 if bn == "transductive" else 12)


def test_running_statistics_are_per_task_and_committed_by_forward() -> None:
    learner = make_learner(bn="running", inner_steps=2)
    episode = make_episode()
    state = learner.adapt(episode.support_x, episode.support_y, episode.n_way)
    mean = "backbone.features.0.1.running_mean"
    assert int(state.stats["backbone.features.0.1.num_batches_tracked"]) == 2
    assert not torch.equal(state.stats[mean], learner.get_buffer(mean))
    learner(episode)
    assert torch.equal(learner.get_buffer(mean), state.stats[mean])
    learner.eval()  # inductive: a query's logits do not depend on the other queries
    with torch.no_grad():
        state = learner.adapt(episode.support_x, episode.support_y, episode.n_way)
        all_logits = learner.predict(episode.query_x, state)
        one = learner.predict(episode.query_x[:1], state)
    torch.testing.assert_close(one, all_logits[:1])


def test_varying_way_with_zero_head_and_learned_head_error() -> None:
    learner = make_learner(meta_sgd=True)
    for n_way in (5, 3, 7):
        episode = make_episode(n_way=n_way, seed=n_way)
        assert learner(episode).shape == (episode.n_query, n_way)
    learned = make_learner(head="learned", n_way=5)
    with pytest.raises(ValueError, match=r"n_way=5 but the episode has n_way=3"):
        learned(make_episode(n_way=3))


def test_meta_sgd_learning_rates_get_gradients() -> None:
    learner = MetaSGD(create_backbone("conv4", hidden=HIDDEN), inner_steps=2)
    assert learner.inner_lrs is not None and learner.inner_lrs["head-weight"].shape == (1, HIDDEN)
    learner.loss(make_episode())[0].backward()
    for name, lr in learner.inner_lrs.items():
        assert lr.grad is not None and float(lr.grad.abs().sum()) > 0, name
    anil = MetaSGD(create_backbone("conv4", hidden=HIDDEN), adapt="head", head="learned", n_way=5)
    assert sorted(anil.inner_lrs) == ["head-bias", "head-weight"]
    assert anil.inner_lrs["head-weight"].shape == (5, HIDDEN)


def test_eval_mode_uses_test_steps_without_a_meta_graph() -> None:
    episode = make_episode()
    learner = make_learner(inner_steps=1, test_inner_steps=4, adapt="top:1")
    reference = make_learner(inner_steps=4, adapt="top:1")
    expected = reference.adapt(episode.support_x, episode.support_y, WAY)
    learner.eval()
    with torch.no_grad():
        state = learner.adapt(episode.support_x, episode.support_y, WAY)
        logits = learner.predict(episode.query_x, state)
    assert not logits.requires_grad
    for name, weight in state.weights.items():
        assert weight.grad_fn is None and not weight.requires_grad
        torch.testing.assert_close(weight, expected.weights[name])
    state = learner.adapt(episode.support_x, episode.support_y, WAY)  # autograd on, eval mode
    assert all(w.grad_fn is None for w in state.weights.values())
    assert all(p.grad is None for p in learner.parameters())


def test_learner_keeps_no_episode_state() -> None:
    learner = make_learner(adapt="top:1", bn="running")
    attrs = dict(vars(learner))
    learner(make_episode())
    assert vars(learner) == attrs


def test_loss_falls_on_a_tiny_training_run(patterns: LabelledImages) -> None:
    torch.manual_seed(0)
    learner = MAML(create_backbone("conv4", hidden=16), inner_steps=1, inner_lr=0.4)
    losses = train_briefly(learner, patterns, EpisodeSpec(5, 1, 3), num_episodes=40)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.75 * first, (first, last)


def test_settings_are_validated() -> None:
    net = create_backbone("conv4", hidden=HIDDEN)
    with pytest.raises(ValueError, match="'all', 'head' or 'top:N'"):
        MAML(net, adapt="bottom:2")
    with pytest.raises(ValueError, match="asks for 5 blocks but the backbone has 4"):
        MAML(net, adapt="top:5")
    with pytest.raises(ValueError, match="head='learned' needs n_way"):
        MAML(net, head="learned")
    with pytest.raises(ValueError, match="bn must be"):
        MAML(net, bn="frozen")  # type: ignore[arg-type]
    assert FOMAML(net).first_order and ANIL(net).adapt_scope == "head"
    assert ANIL(net, adapt="top:1").adapted_parameter_names()[0] == "backbone.features.3.0.weight"


def test_frozen_parameters_do_not_adapt_and_parameterless_backbones_work() -> None:
    learner = make_learner(adapt="top:1")
    learner.backbone.features[3][0].weight.requires_grad_(False)
    names = learner.adapted_parameter_names()
    assert "backbone.features.3.0.weight" not in names and "backbone.features.3.0.bias" in names
    episode = make_episode()
    state = learner.adapt(episode.support_x, episode.support_y, WAY)
    assert sorted(state.weights) == sorted(names)
    pixels = ANIL(create_backbone("pixels", in_channels=1, image_size=SIZE), meta_sgd=True)
    assert pixels(make_episode()).shape == (2 * WAY, WAY)


def test_variants_and_deepcopy() -> None:
    net = create_backbone("conv4", hidden=HIDDEN)
    assert MAML(net, **MAML_VARIANTS["anil"]).adapt_scope == "head"
    assert MAML(net, **MAML_VARIANTS["fomaml"]).first_order
    assert MAML(net, **MAML_VARIANTS["metasgd"]).inner_lrs is not None
    assert MAML_VARIANTS["maml"] == {}
    learner = make_learner(adapt="top:1")
    twin = copy.deepcopy(learner)
    assert twin._plan.top[0].module is twin.backbone.features[3]
    with torch.no_grad():
        twin.backbone.features[3][0].weight.mul_(2.0)
    episode = make_episode()
    assert not torch.allclose(twin(episode), learner(episode))


def test_resnet12_top_block_split_is_exact() -> None:
    backbone = create_backbone("resnet12", in_channels=1, image_size=SIZE, widths=(4, 4, 4, 4))
    episode = make_episode(dtype=torch.float64)
    grads = []
    for cache in (True, False):
        torch.manual_seed(0)
        learner = MAML(copy.deepcopy(backbone), adapt="top:1", cache_frozen_trunk=cache).double()
        grads.append(meta_gradient(learner, episode))
    assert max_abs_diff(*grads) < 1e-12


class _Pooled(Backbone):
    """Blocks then average pooling: needs the ``forward_tail`` hook to be split."""

    def __init__(self, with_hook: bool, extra_param: bool = False) -> None:
        super().__init__()
        self.input_spec = InputSpec(1, 8, (0.0,), (1.0,))
        self.out_dim = 3
        self.stages = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1))
        self.scale = nn.Parameter(torch.ones(1)) if extra_param else None
        if with_hook:
            self.forward_tail = lambda h: h.mean((2, 3))

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(x).mean((2, 3))
        return h * self.scale if self.scale is not None else h


def test_backbone_split_needs_the_tail_hook_and_all_parameters_in_blocks() -> None:
    assert MAML(_Pooled(with_hook=True), adapt="top:1").adapted_parameter_names()[:2] == [
        "backbone.stages.1.weight",
        "backbone.stages.1.bias",
    ]
    with pytest.raises(ValueError, match="define `forward_tail"):
        MAML(_Pooled(with_hook=False), adapt="top:1")
    with pytest.raises(ValueError, match=r"parameters outside its blocks \(backbone.scale\)"):
        MAML(_Pooled(with_hook=True, extra_param=True), adapt="top:1")
    MAML(_Pooled(with_hook=False, extra_param=True), adapt="all")  # no split needed


def agreement_table() -> str:
    """Max |meta-gradient difference| of ours vs hand-written and vs higher (learned head),
    and, for scale, of float32 runs vs the float64 hand-written reference."""
    lines = [
        "| inner steps | order | dtype | max abs grad | vs hand-written | vs higher "
        "| vs fp64 hand-written |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for steps, first_order in GRADIENT_CASES:
        kw = {"inner_steps": steps, "first_order": first_order, "head": "learned", "n_way": WAY}
        learner = make_learner(torch.float64, **kw)
        fp64_hand = reference_meta_gradient(
            learner, make_episode(dtype=torch.float64), steps, first_order
        )
        for dtype in (torch.float32, torch.float64):
            learner = make_learner(dtype, **kw)
            episode = make_episode(dtype=dtype)
            ours = meta_gradient(learner, episode)
            hand = reference_meta_gradient(learner, episode, steps, first_order)
            other = higher_meta_gradient(learner, episode, steps, first_order)
            vs64 = max_abs_diff({k: v.double() for k, v in ours.items()}, fp64_hand)
            lines.append(
                f"| {steps} | {'1st' if first_order else '2nd'} | {str(dtype)[6:]} | "
                f"{max_abs(hand):.3g} | {max_abs_diff(ours, hand):.1e} | "
                f"{max_abs_diff(ours, other):.1e} | {vs64:.1e} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(agreement_table())
