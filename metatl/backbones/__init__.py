"""Feature extractors behind one registry.

>>> from metatl.backbones import create_backbone
>>> net = create_backbone("conv4", in_channels=1, image_size=28)
>>> net.out_dim
64

torchvision classifiers (``resnet18`` ... ``efficientnet_b0``) and ``timm:<model name>`` are
registered too; ``create_backbone(name, pretrained=...)`` loads named weights, a state-dict
file or a metatl checkpoint (see :mod:`metatl.backbones.weights`).
"""

from metatl.backbones import conv4 as _conv4  # noqa: F401 - registers "conv4"
from metatl.backbones import pixels as _pixels  # noqa: F401 - registers "pixels"
from metatl.backbones import resnet12 as _resnet12  # noqa: F401 - registers "resnet12"
from metatl.backbones import timm_models as _timm_models  # noqa: F401 - registers "timm:"
from metatl.backbones import torchvision_models as _torchvision_models  # noqa: F401
from metatl.backbones.adapted import AdaptedBackbone, GreyToRGB
from metatl.backbones.base import Backbone, InputSpec
from metatl.backbones.conv4 import Conv4
from metatl.backbones.pixels import Pixels
from metatl.backbones.registry import (
    UnknownBackboneError,
    create_backbone,
    list_backbone_families,
    list_backbones,
    register_backbone,
    register_backbone_family,
)
from metatl.backbones.resnet12 import ResNet12
from metatl.backbones.timm_models import TimmBackbone
from metatl.backbones.torchvision_models import (
    TORCHVISION_BACKBONES,
    TorchvisionBackbone,
    torchvision_state_dict,
    torchvision_weights,
)
from metatl.backbones.weights import (
    UnknownWeightsError,
    WeightsError,
    WeightsHashError,
    WeightsNotFoundError,
    hub_checkpoint_dir,
    install_weights_file,
    load_pretrained,
)

__all__ = [
    "TORCHVISION_BACKBONES",
    "AdaptedBackbone",
    "Backbone",
    "Conv4",
    "GreyToRGB",
    "InputSpec",
    "Pixels",
    "ResNet12",
    "TimmBackbone",
    "TorchvisionBackbone",
    "UnknownBackboneError",
    "UnknownWeightsError",
    "WeightsError",
    "WeightsHashError",
    "WeightsNotFoundError",
    "create_backbone",
    "hub_checkpoint_dir",
    "install_weights_file",
    "list_backbone_families",
    "list_backbones",
    "load_pretrained",
    "register_backbone",
    "register_backbone_family",
    "torchvision_state_dict",
    "torchvision_weights",
]
