"""Feature extractors behind one registry.

>>> from metatl.backbones import create_backbone
>>> net = create_backbone("conv4", in_channels=1, image_size=28)
>>> net.out_dim
64
"""

from metatl.backbones import conv4 as _conv4  # noqa: F401 - registers "conv4"
from metatl.backbones import pixels as _pixels  # noqa: F401 - registers "pixels"
from metatl.backbones import resnet12 as _resnet12  # noqa: F401 - registers "resnet12"
from metatl.backbones.base import Backbone, InputSpec
from metatl.backbones.conv4 import Conv4
from metatl.backbones.pixels import Pixels
from metatl.backbones.registry import (
    UnknownBackboneError,
    create_backbone,
    list_backbones,
    register_backbone,
)
from metatl.backbones.resnet12 import ResNet12

__all__ = [
    "Backbone",
    "Conv4",
    "InputSpec",
    "Pixels",
    "ResNet12",
    "UnknownBackboneError",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
