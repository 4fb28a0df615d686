"""torchvision's ImageNet classifiers as feature backbones, with their named weights.

Example::

    net = create_backbone("mobilenet_v2", pretrained="IMAGENET1K_V1")
    net.out_dim, net.input_spec.size, len(net.blocks)  # (1280, 224, 9)

Registered: ``resnet18``, ``resnet34``, ``resnet50``, ``mobilenet_v2``, ``mobilenet_v3_small``,
``mobilenet_v3_large``, ``efficientnet_b0``. The classifier is removed: ``forward`` returns the
globally average-pooled features. ``blocks`` are the stem, the stages (ResNet ``layer1..4``;
for MobileNets and EfficientNet the runs of blocks of one width, as in the papers' tables),
and the last 1x1 conv where there is one. Input size, mean and std come from the weights'
transforms meta (224 px, ImageNet mean/std).

torchvision is imported when a backbone is built, not when this module is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from metatl.backbones.adapted import AdaptedBackbone
from metatl.backbones.registry import register_backbone
from metatl.backbones.weights import (
    UnknownWeightsError,
    WeightsError,
    cached_url_file,
    load_state_into,
    load_weights_file,
)

if TYPE_CHECKING:
    from torchvision.models import Weights, WeightsEnum

__all__ = [
    "TORCHVISION_BACKBONES",
    "TorchvisionBackbone",
    "torchvision_state_dict",
    "torchvision_weights",
]

TORCHVISION_BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
)


def _weights_enum(arch: str) -> type[WeightsEnum]:
    from torchvision import models

    return models.get_model_weights(arch)


def torchvision_weights(arch: str, name: str) -> Weights:
    """torchvision's weights ``name`` (``IMAGENET1K_V1``, ``DEFAULT`` ...) of ``arch``.

    Raises:
        UnknownWeightsError: Unknown name; the message lists the valid ones.
    """
    enum = _weights_enum(arch)
    if name == "DEFAULT":
        return enum.DEFAULT  # type: ignore[attr-defined]
    try:
        return enum[name]  # type: ignore[no-any-return]
    except KeyError:
        valid = ", ".join([*(w.name for w in enum), "DEFAULT"])
        raise UnknownWeightsError(
            f"unknown weights '{name}' for {arch}; valid weight names: {valid}"
        ) from None


def torchvision_state_dict(
    arch: str, name: str = "DEFAULT", *, download: bool | None = None
) -> dict[str, torch.Tensor]:
    """The full state dict (classifier included) of torchvision's weights ``name`` of ``arch``,
    in torchvision's layout: from the torch hub cache, hash checked, ``weights_only=True``."""
    weights = torchvision_weights(arch, name)
    path = cached_url_file(weights.url, download=download, what=f"{arch} {weights.name}")
    state = load_weights_file(path)
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict")
    return state


def _width(module: nn.Module) -> int:
    if hasattr(module, "out_channels"):
        return int(module.out_channels)
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def _feature_stages(features: Sequence[nn.Module]) -> list[tuple[str, nn.Module]]:
    """Middle ``features`` as stages: kept when torchvision already groups them (EfficientNet),
    else grouped into runs of equal output width (MobileNets)."""
    if all(isinstance(m, nn.Sequential) and not hasattr(m, "out_channels") for m in features):
        groups = [[m] for m in features]
    else:
        groups = []
        for m in features:
            if groups and _width(groups[-1][-1]) == _width(m):
                groups[-1].append(m)
            else:
                groups.append([m])
    return [
        (
            f"stage{i}",
            g[0] if len(g) == 1 and isinstance(g[0], nn.Sequential) else nn.Sequential(*g),
        )
        for i, g in enumerate(groups, start=1)
    ]


class TorchvisionBackbone(AdaptedBackbone):
    """A torchvision classifier without its head: ``[B, 3, H, W] -> [B, out_dim]``.

    Args:
        arch: A torchvision model name from :data:`TORCHVISION_BACKBONES` (others of the same
            families work too).
        in_channels: 3, or 1 for grey input mapped exactly onto the RGB normalisation (the
            usual way is 3: :class:`~metatl.training.data.ImageTransform` replicates grey).
        image_size: Input size for the transform; default the weights' crop size (224).
    """

    def __init__(self, arch: str, in_channels: int = 3, image_size: int | None = None) -> None:
        from torchvision import models

        model = models.get_model(arch, weights=None)
        preset: Any = _weights_enum(arch).DEFAULT.transforms()  # type: ignore[attr-defined]
        if isinstance(model, models.ResNet):
            stem = [(n, getattr(model, n)) for n in ("conv1", "bn1", "relu", "maxpool")]
            stages = [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5)]
            head = model.fc
            head_prefixes = ("fc.",)
        elif isinstance(getattr(model, "features", None), nn.Sequential) and hasattr(
            model, "classifier"
        ):
            features = list(model.features)
            stem = [("conv", features[0])]
            stages = [*_feature_stages(features[1:-1]), ("last_conv", features[-1])]
            head = model.classifier
            head_prefixes = ("classifier.",)
        else:
            raise ValueError(f"torchvision model '{arch}' has no known feature/head layout")
        linear = next(m for m in head.modules() if isinstance(m, nn.Linear))
        super().__init__(
            model,
            stem,
            stages,
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)),
            head_prefixes=head_prefixes,
            out_dim=linear.in_features,
            size=image_size or int(preset.crop_size[0]),
            mean=preset.mean,
            std=preset.std,
            in_channels=in_channels,
        )
        self.name = arch

    def weight_names(self) -> list[str]:
        """torchvision's weight names for this architecture, then ``DEFAULT``."""
        return [*(w.name for w in _weights_enum(self.name)), "DEFAULT"]

    def load_named_weights(self, name: str, *, download: bool | None = None) -> None:
        """Load torchvision's weights ``name`` (see :func:`torchvision_state_dict`)."""
        weights = torchvision_weights(self.name, name)
        state = torchvision_state_dict(self.name, name, download=download)
        load_state_into(self, state, f"{self.name} {weights.name} ({weights.url.rsplit('/')[-1]})")

    def extra_repr(self) -> str:
        return f"{self.name}, {super().extra_repr()}"


def _register(arch: str) -> None:
    def factory(**kwargs: Any) -> TorchvisionBackbone:
        return TorchvisionBackbone(arch, **kwargs)

    factory.__doc__ = f"torchvision's {arch} without its classifier."
    register_backbone(arch)(factory)


for _arch in TORCHVISION_BACKBONES:
    _register(_arch)
