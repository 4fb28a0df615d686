"""The backbone registry and every registered backbone."""

from __future__ import annotations

import pytest
import torch

from metatl.backbones import (
    Backbone,
    UnknownBackboneError,
    create_backbone,
    list_backbones,
    register_backbone,
    registry,
)
from metatl.backbones.pixels import Pixels


@pytest.mark.parametrize("name", list_backbones())
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_every_backbone_forward_backward(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    net = create_backbone(name, in_channels=channels, image_size=size)
    assert isinstance(net, Backbone)
    assert net.input_spec.channels == channels and net.input_spec.size == size
    x = torch.randn(4, channels, size, size, requires_grad=True)
    out = net(x)
    assert out.shape == (4, net.out_dim)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert len(net.blocks) >= 1


def test_conv4_out_dim_follows_paper_sizes() -> None:
    assert create_backbone("conv4", in_channels=1, image_size=28).out_dim == 64
    assert create_backbone("conv4", in_channels=3, image_size=84).out_dim == 1600
    assert len(create_backbone("conv4").blocks) == 4


def test_resnet12_width() -> None:
    net = create_backbone("resnet12", in_channels=3, image_size=84)
    assert net.out_dim == 640 and len(net.blocks) == 4


def test_unknown_backbone_lists_known_names() -> None:
    with pytest.raises(UnknownBackboneError, match="unknown backbone 'conv5'.*conv4"):
        create_backbone("conv5")


def test_duplicate_registration_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_backbone("tiny")(lambda **kw: Pixels(**kw))
    with pytest.warns(UserWarning, match="'tiny' is registered twice"):
        register_backbone("tiny")(lambda **kw: Pixels(in_channels=3))
    assert create_backbone("tiny").input_spec.channels == 3
