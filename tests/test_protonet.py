"""ProtoNet against closed forms, and learning on a tiny problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from episodes import Episode, EpisodeSpec, LabelledImages
from metatl.algorithms import ProtoNet
from metatl.backbones import Backbone, InputSpec, create_backbone
from tests.conftest import train_briefly


class Linear2(Backbone):
    """Flatten then a fixed linear map: features are known in closed form."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.input_spec = InputSpec(1, 2, (0.0,), (1.0,))
        self.out_dim = weight.shape[0]
        self.proj = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.proj.weight.data.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1))


def tiny_episode() -> Episode:
    gen = torch.Generator().manual_seed(0)
    support = torch.randn(6, 1, 2, 2, generator=gen, dtype=torch.float64)
    query = torch.randn(4, 1, 2, 2, generator=gen, dtype=torch.float64)
    return Episode(
        support,
        torch.tensor([0, 0, 1, 1, 2, 2]),
        query,
        torch.tensor([0, 1, 2, 0]),
        torch.tensor([10, 11, 12]),
    )


@pytest.mark.parametrize("distance", ["sqeuclidean", "cosine"])
def test_logits_match_closed_form(distance: str) -> None:
    weight = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    net = ProtoNet(Linear2(weight).double(), distance=distance, cosine_scale=7.0).double()
    ep = tiny_episode()
    fs, fq = ep.support_x.flatten(1) @ weight.T, ep.query_x.flatten(1) @ weight.T
    protos = torch.stack([fs[2 * k : 2 * k + 2].mean(0) for k in range(3)])
    if distance == "sqeuclidean":
        expected = -torch.stack([((fq - p) ** 2).sum(1) for p in protos], dim=1)
    else:
        cos = torch.stack([(fq @ p) / (fq.norm(dim=1) * p.norm()) for p in protos], dim=1)
        expected = 7.0 * cos
    assert torch.allclose(net(ep), expected, atol=1e-10)
    state = net.adapt(ep.support_x, ep.support_y, ep.n_way)
    assert torch.allclose(net.predict(ep.query_x, state), expected, atol=1e-10)
    assert not any(
        isinstance(v, torch.Tensor) and v.shape == protos.shape for v in vars(net).values()
    ), "adapt must not store state on the learner"


def test_cosine_scale_is_learnable() -> None:
    net = ProtoNet(create_backbone("conv4"), distance="cosine")
    assert any(p is net.scale for p in net.parameters())
    with pytest.raises(ValueError, match="distance must be"):
        ProtoNet(create_backbone("conv4"), distance="manhattan")  # type: ignore[arg-type]


def test_pixels_protonet_is_nearest_class_mean() -> None:
    support = torch.tensor([[0.0, 0.0], [0.0, 2.0], [10.0, 10.0], [10.0, 12.0]]).view(4, 1, 1, 2)
    query = torch.tensor([[1.0, 1.0], [9.0, 9.0]]).view(2, 1, 1, 2)
    ep = Episode(support, torch.tensor([0, 0, 1, 1]), query, torch.tensor([0, 1]), torch.arange(2))
    net = ProtoNet(create_backbone("pixels", in_channels=1, image_size=2))
    assert net(ep).argmax(1).tolist() == [0, 1]
    assert net(ep)[0].tolist() == pytest.approx([-1.0, -181.0])


def test_loss_falls_on_a_tiny_training_run(patterns: LabelledImages) -> None:
    torch.manual_seed(0)
    net = ProtoNet(create_backbone("conv4", hidden=16))
    losses = train_briefly(net, patterns, EpisodeSpec(5, 2, 5), num_episodes=60)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)
