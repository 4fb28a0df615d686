"""The methods the harness puts side by side, each built from the same weights and episodes.

A :class:`Method` is a ``backward`` (it only accumulates ``.grad``) over a list of parameters
in one canonical order (the metatl learner's: backbone blocks, then the head), so that the
harness can compare meta-gradients method by method and wrap each in an Adam step. Every
method calls ``backward`` once per episode of the meta-batch (as ``metatl.training.meta_train``
and the peers' own recipes do), so one episode's graph is alive at a time.

The peers live outside the project's environment, in ``.peers/meta``
(``bash benchmarks/install_peers.sh``), which :func:`load_peers` appends to ``sys.path``.
"""

from __future__ import annotations

import copy
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from benchmarks.maml_step_time import hand_features, hand_forward
from episodes import Episode
from metatl.algorithms.maml import MAML
from metatl.algorithms.protonet import ProtoNet
from metatl.backbones import create_backbone

__all__ = ["PEER_SITE", "Method", "Net", "anil_methods", "load_peers", "maml_methods"]

REPO = Path(__file__).resolve().parents[1]
PEER_SITE = REPO / ".peers" / "meta"
INSTALL_HINT = "bash benchmarks/install_peers.sh"
PEERS = {"learn2learn": "learn2learn", "higher": "higher", "easyfsl": "easyfsl.methods"}


def load_peers(names: tuple[str, ...] = tuple(PEERS)) -> tuple[dict[str, ModuleType], dict]:
    """Import the peers (``.peers/meta`` appended to ``sys.path``): modules and, for each one
    that fails, why and how to install it."""
    if str(PEER_SITE) not in sys.path:
        sys.path.append(str(PEER_SITE))
    found, missing = {}, {}
    for name in names:
        try:
            found[name] = importlib.import_module(PEERS[name])
        except Exception as err:  # an ImportError, or a peer broken against this torch
            missing[name] = f"{type(err).__name__}: {err} (install: {INSTALL_HINT})"
    return found, missing


@dataclass
class Method:
    """``backward()`` accumulates the step's meta-gradient into ``params``' ``.grad``."""

    name: str
    params: list[torch.Tensor]
    backward: Callable[[], None]
    note: str = ""
    compare_grads: bool = True  # False when the peer's objective differs from metatl's


@dataclass(frozen=True)
class Net:
    """The shared starting point: a Conv-4 (BatchNorm) and a learned ``n_way`` head."""

    backbone: nn.Module
    head: nn.Linear

    @classmethod
    def build(cls, way: int, channels: int, size: int, device: torch.device) -> Net:
        torch.manual_seed(0)
        backbone = create_backbone("conv4", in_channels=channels, image_size=size, hidden=64)
        head = nn.Linear(backbone.out_dim, way)
        return cls(backbone.to(device).train(), head.to(device))

    def copy(self) -> tuple[nn.Module, nn.Linear]:
        return copy.deepcopy(self.backbone), copy.deepcopy(self.head)

    def sequential(self) -> nn.Sequential:
        return nn.Sequential(*self.copy()).train()

    def leaf_tensors(self, with_head: bool = True) -> list[torch.Tensor]:
        modules = (self.backbone, self.head) if with_head else (self.backbone,)
        return [p.detach().clone().requires_grad_() for m in modules for p in m.parameters()]


def _mean(episodes: list[Episode]) -> float:
    return 1.0 / len(episodes)


def as_trained(method: Method, learner: nn.Module, episodes: list[Episode]) -> Method:
    """``method`` as ``metatl.train`` runs it on a CPU: weights and images channels_last.

    ``learner`` is the module ``method`` steps (converted in place) and ``episodes`` the list
    its ``backward`` reads (its images replaced), so the caller hands over copies of both.
    """
    learner.to(memory_format=torch.channels_last)
    episodes[:] = [
        ep.map_images(lambda x: x.contiguous(memory_format=torch.channels_last)) for ep in episodes
    ]
    return Method(f"{method.name}, channels_last", list(learner.parameters()), method.backward)


# --- MAML ------------------------------------------------------------------------------------


def metatl_maml(
    net: Net,
    episodes: list[Episode],
    s,
    adapt: str = "all",
    channels_last: bool = False,
    **kw,
) -> Method:
    """metatl's MAML; ``channels_last``: on copies of the episodes, as ``metatl.train`` runs."""
    if channels_last:
        episodes = list(episodes)
    backbone, head = net.copy()
    learner = MAML(
        backbone,
        n_way=s.way,
        head="learned",
        inner_steps=s.inner_steps,
        inner_lr=s.inner_lr,
        first_order=s.first_order,
        adapt=adapt,
        **kw,
    )
    learner = learner.to(head.weight.device).train()
    learner.head.load_state_dict(head.state_dict())

    def backward() -> None:  # per-episode backward, as metatl.training.meta_train does
        for ep in episodes:
            (learner.loss(ep)[0] * _mean(episodes)).backward()

    method = Method("metatl", list(learner.parameters()), backward)
    return as_trained(method, learner, episodes) if channels_last else method


def l2l_maml(l2l: ModuleType, net: Net, episodes: list[Episode], s) -> Method:
    """learn2learn's recipe: ``learner = maml.clone(); learner.adapt(loss)``, per-task backward."""
    maml = l2l.algorithms.MAML(net.sequential(), lr=s.inner_lr, first_order=s.first_order)

    def backward() -> None:
        for ep in episodes:
            learner = maml.clone()
            for _ in range(s.inner_steps):
                learner.adapt(F.cross_entropy(learner(ep.support_x), ep.support_y))
            loss = F.cross_entropy(learner(ep.query_x), ep.query_y) * _mean(episodes)
            loss.backward()

    return Method("learn2learn", list(maml.parameters()), backward)


def higher_maml(higher: ModuleType, net: Net, episodes: list[Episode], s) -> Method:
    """higher's ``innerloop_ctx(model, opt, copy_initial_weights=False)``, per-task backward."""
    model = net.sequential()
    inner_opt = torch.optim.SGD(model.parameters(), lr=s.inner_lr)
    callback = (lambda grads: [g.detach() for g in grads]) if s.first_order else None

    def backward() -> None:
        for ep in episodes:
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fnet, diff):
                for _ in range(s.inner_steps):
                    support_loss = F.cross_entropy(fnet(ep.support_x), ep.support_y)
                    diff.step(support_loss, grad_callback=callback)
                loss = F.cross_entropy(fnet(ep.query_x), ep.query_y) * _mean(episodes)
                loss.backward()

    return Method("higher", list(model.parameters()), backward)


def hand_maml(net: Net, episodes: list[Episode], s) -> Method:
    """Explicit tensors and ``torch.autograd.grad``: the floor."""
    params = net.leaf_tensors()

    def backward() -> None:
        for ep in episodes:
            fast = params
            for _ in range(s.inner_steps):
                loss = F.cross_entropy(hand_forward(fast, ep.support_x), ep.support_y)
                grads = torch.autograd.grad(loss, fast, create_graph=not s.first_order)
                fast = [w - s.inner_lr * g for w, g in zip(fast, grads, strict=True)]
            loss = F.cross_entropy(hand_forward(fast, ep.query_x), ep.query_y)
            (loss * _mean(episodes)).backward()

    return Method("hand-written autograd", params, backward)


def maml_methods(peers: dict[str, ModuleType], net: Net, episodes: list[Episode], s) -> list:
    methods = [metatl_maml(net, episodes, s), metatl_maml(net, episodes, s, channels_last=True)]
    if "learn2learn" in peers:
        methods.append(l2l_maml(peers["learn2learn"], net, episodes, s))
    if "higher" in peers:
        methods.append(higher_maml(peers["higher"], net, episodes, s))
    methods.append(hand_maml(net, episodes, s))
    return methods


# --- ANIL / top:N ----------------------------------------------------------------------------


def l2l_anil(l2l: ModuleType, net: Net, episodes: list[Episode], s, n_top: int) -> Method:
    """learn2learn's ANIL recipe: the trunk runs once per task outside ``MAML``; the adapted
    part (the top ``n_top`` blocks and the head) is wrapped in ``l2l.algorithms.MAML``.
    Support and query go through the trunk separately (as metatl's BatchNorm does)."""
    backbone, head = net.copy()
    blocks = list(backbone.blocks)
    cut = len(blocks) - n_top
    trunk = nn.Sequential(*blocks[:cut]).train()
    top = nn.Sequential(*blocks[cut:], nn.Flatten(), head).train()
    maml = l2l.algorithms.MAML(top, lr=s.inner_lr, first_order=s.first_order)

    def backward() -> None:
        for ep in episodes:
            support, query = trunk(ep.support_x), trunk(ep.query_x)
            learner = maml.clone()
            for _ in range(s.inner_steps):
                learner.adapt(F.cross_entropy(learner(support), ep.support_y))
            loss = F.cross_entropy(learner(query), ep.query_y) * _mean(episodes)
            loss.backward()

    return Method("learn2learn", [*trunk.parameters(), *maml.parameters()], backward)


def hand_anil(net: Net, episodes: list[Episode], s) -> Method:
    """Features once per task, the head adapted by hand."""
    params = net.leaf_tensors()
    trunk, head = params[:-2], params[-2:]

    def backward() -> None:
        for ep in episodes:
            support = hand_features(trunk, ep.support_x)
            fast = head
            for _ in range(s.inner_steps):
                loss = F.cross_entropy(F.linear(support, *fast), ep.support_y)
                grads = torch.autograd.grad(loss, fast, create_graph=not s.first_order)
                fast = [w - s.inner_lr * g for w, g in zip(fast, grads, strict=True)]
            query = hand_features(trunk, ep.query_x)
            (F.cross_entropy(F.linear(query, *fast), ep.query_y) * _mean(episodes)).backward()

    return Method("hand-written autograd", params, backward)


def anil_methods(peers: dict[str, ModuleType], net: Net, episodes: list[Episode], s) -> list:
    """``s.adapt`` is ``"head"`` (ANIL) or ``"top:N"``; full MAML is the same learner with
    ``adapt="all"`` (its gradient is of another objective, so it is not compared)."""
    n_top = 0 if s.adapt == "head" else int(s.adapt.partition(":")[2])
    methods = [metatl_maml(net, episodes, s, adapt=s.adapt)]
    uncached = metatl_maml(net, episodes, s, adapt=s.adapt, cache_frozen_trunk=False)
    uncached.name, uncached.note = "metatl, trunk not cached", "whole backbone each inner step"
    full = metatl_maml(net, episodes, s, adapt="all")
    full.name, full.compare_grads, full.note = "metatl full MAML (all)", False, "other objective"
    methods += [uncached, full]
    if "learn2learn" in peers:
        methods.append(l2l_anil(peers["learn2learn"], net, episodes, s, n_top))
    if n_top == 0:
        methods.append(hand_anil(net, episodes, s))
    return methods


# --- ProtoNet --------------------------------------------------------------------------------


def protonet_methods(peers: dict[str, ModuleType], net: Net, episodes: list[Episode], s) -> list:
    """metatl's ProtoNet (logits ``-||q - c||^2``, one backbone pass over support and query),
    easyfsl's ``PrototypicalNetworks`` (logits ``-||q - c||``, support and query through the
    backbone separately, so BatchNorm batches differ: another loss, so its gradient is not
    compared) and a minimal hand-written one (metatl's loss)."""
    learner = ProtoNet(copy.deepcopy(net.backbone)).to(net.head.weight.device).train()

    def ours() -> None:
        for ep in episodes:
            (learner.loss(ep)[0] * _mean(episodes)).backward()

    methods = [Method("metatl", list(learner.parameters()), ours)]
    fast = ProtoNet(copy.deepcopy(net.backbone)).to(net.head.weight.device).train()
    fast_episodes = list(episodes)

    def fast_backward() -> None:
        for ep in fast_episodes:
            (fast.loss(ep)[0] * _mean(fast_episodes)).backward()

    methods.append(as_trained(Method("metatl", [], fast_backward), fast, fast_episodes))
    if "easyfsl" in peers:
        model = peers["easyfsl"].PrototypicalNetworks(copy.deepcopy(net.backbone))
        model = model.to(net.head.weight.device).train()

        def easyfsl() -> None:
            for ep in episodes:
                model.process_support_set(ep.support_x, ep.support_y)
                loss = F.cross_entropy(model(ep.query_x), ep.query_y) * _mean(episodes)
                loss.backward()

        note = "another loss: -||q - c||, support and query BatchNorm apart"
        methods.append(Method("easyfsl", list(model.parameters()), easyfsl, note, False))
    params = net.leaf_tensors(with_head=False)

    def hand() -> None:
        for ep in episodes:  # one backbone pass over support and query, as metatl's
            features = hand_features(params, torch.cat([ep.support_x, ep.query_x]))
            support, query = features[: len(ep.support_y)], features[len(ep.support_y) :]
            protos = support.new_zeros(ep.n_way, support.shape[1])
            protos = protos.index_add(0, ep.support_y, support)
            protos = protos / torch.bincount(ep.support_y, minlength=ep.n_way).unsqueeze(1)
            logits = -(query.unsqueeze(1) - protos.unsqueeze(0)).pow(2).sum(-1)
            (F.cross_entropy(logits, ep.query_y) * _mean(episodes)).backward()

    methods.append(Method("hand-written autograd", params, hand))
    return methods


# --- Episode sampling ------------------------------------------------------------------------


def sampling_methods(peers: dict[str, ModuleType], data, s, per_step: int) -> list:
    """Each step draws ``per_step`` episodes as float normalised support and query tensors:
    metatl's :class:`~episodes.EpisodeDataset` over the in-memory uint8 cache, and
    learn2learn's ``TaskDataset`` (its Omniglot benchmark's transforms) over the same images."""
    from benchmarks.episode_sampling import to_float
    from episodes import EpisodeDataset, EpisodeSpec

    spec = EpisodeSpec(s.way, s.shot, s.query)
    ours = EpisodeDataset.from_spec(data, spec, 0, 1_000_000, to_float)
    counter = iter(range(1_000_000))

    def metatl_draw() -> None:
        for _ in range(per_step):
            ours[next(counter)]

    methods = [Method("metatl", [], metatl_draw)]
    if "learn2learn" in peers:
        l2l = peers["learn2learn"]
        meta = l2l.data.MetaDataset(_Images(data), labels_to_indices=_labels_to_indices(data))
        tasks = l2l.data.TaskDataset(
            meta,
            task_transforms=[
                l2l.data.transforms.FusedNWaysKShots(meta, n=s.way, k=s.shot + s.query),
                l2l.data.transforms.LoadData(meta),
                l2l.data.transforms.RemapLabels(meta),
                l2l.data.transforms.ConsecutiveLabels(meta),
            ],
            num_tasks=-1,
        )
        per_class = s.shot + s.query
        support = (torch.arange(s.way * per_class) % per_class) < s.shot

        def l2l_draw() -> None:
            for _ in range(per_step):
                x, y = tasks.sample()
                x = to_float(x)
                _ = (x[support], y[support], x[~support], y[~support])

        methods.append(Method("learn2learn", [], l2l_draw, "TaskDataset.sample + split"))
    return methods


class _Images(torch.utils.data.Dataset):
    """``(uint8 image, label)`` items over a :class:`~episodes.LabelledImages` cache."""

    def __init__(self, data) -> None:
        self.images, self.labels = data.images, data.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], self.labels[i]


def _labels_to_indices(data) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, label in enumerate(data.labels.tolist()):
        out.setdefault(label, []).append(i)
    return out
