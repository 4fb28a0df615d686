"""Source models to transfer from, named by one short spec each.

A spec is one of

- ``<backbone>@random``: a fresh initialisation (the no-knowledge control), e.g. ``conv4@random``;
- ``<backbone>@<weights>``: a backbone with weights it knows by name, e.g.
  ``mobilenet_v2@IMAGENET1K_V1`` (torchvision's ImageNet weights, from the torch hub cache);
- a path: a metatl checkpoint (``runs/<run>`` or its ``best.pt``) from ``python -m
  metatl.train`` (its own meta-learned adaptation comes along) or ``python -m metatl.pretrain``
  (its classifier over the source classes comes along).

``NAME=SPEC`` names a source; without a name it is derived from the spec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from metatl.algorithms import Learner
from metatl.backbones import Backbone, create_backbone
from metatl.backbones.registry import UnknownBackboneError
from metatl.backbones.torchvision_models import TorchvisionBackbone, torchvision_state_dict
from metatl.backbones.weights import WeightsError
from metatl.config import ConfigError, DataConfig
from metatl.training.restore import load_learner

__all__ = ["RANDOM", "Source", "SourceSpecError", "load_source", "parse_source_spec"]

RANDOM = "random"
"""The weights part of a spec that asks for a fresh initialisation."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


class SourceSpecError(ConfigError):
    """A source spec names nothing that can be loaded."""


@dataclass(frozen=True)
class Source:
    """A model to transfer from.

    Attributes:
        name: How the source is called in tables and method names (no ``/``).
        spec: The spec it was loaded from.
        backbone: Its feature extractor, in eval mode.
        classifier: Its classifier over the source classes on the backbone's output
            (``[out_dim] -> [classes]``), when it has one: ImageNet weights, a pretraining
            checkpoint. LEEP and NCE need it.
        learner: The checkpoint's own learner (ProtoNet, MAML, ...) when it is a
            meta-training checkpoint, for its own adaptation.
        data: Where its training data is (metatl checkpoints), else None.
        random_init: A fresh initialisation (``<backbone>@random``): it knows no source.
    """

    name: str
    spec: str
    backbone: Backbone
    classifier: nn.Linear | None = None
    learner: Learner | None = None
    data: DataConfig | None = None
    random_init: bool = False

    @property
    def n_blocks(self) -> int:
        return len(self.backbone.blocks)


def parse_source_spec(text: str) -> tuple[str, str]:
    """``NAME=SPEC`` or ``SPEC`` -> ``(name, spec)``, the name derived when not given.

    Raises:
        SourceSpecError: An empty spec, or a name that is not a plain word.
    """
    name, sep, spec = text.partition("=")
    if not sep:
        name, spec = "", text
    spec = spec.strip()
    if not spec:
        raise SourceSpecError(f"source {text!r} has no spec; give NAME=SPEC or SPEC")
    if not name:
        name = _derived_name(spec)
    if not _NAME.fullmatch(name) or name == "pixels":
        raise SourceSpecError(
            f"source name {name!r} must be letters, digits and _.+- (not 'pixels'); give NAME=SPEC"
        )
    return name, spec


def _derived_name(spec: str) -> str:
    backbone, sep, weights = spec.rpartition("@")
    if sep and "/" not in spec:
        return f"{backbone.replace(':', '-')}-{weights}"
    path = Path(spec)
    return path.parent.name if path.name.endswith(".pt") else path.name


def load_source(
    text: str,
    *,
    in_channels: int,
    image_size: int,
    input_size: int = 0,
    seed: int = 0,
) -> Source:
    """Load the source a spec names (see the module docstring).

    Args:
        text: ``NAME=SPEC`` or ``SPEC``.
        in_channels: Channels of the target images (a fresh Conv-4 is built for them;
            torchvision backbones take 3 and are given grey images replicated).
        image_size: Size of the target images, the input size of a fresh backbone.
        input_size: Input size of ``<backbone>@<weights>`` sources if not 0 (e.g. 84 for
            an ImageNet MobileNetV2 on small images); ``<backbone>@random`` is built at
            ``image_size`` like the scratch network, checkpoints keep their own.
        seed: Seed of a fresh initialisation.

    Raises:
        SourceSpecError: Neither a known backbone nor an existing checkpoint.
        CheckpointError: A checkpoint that cannot be read or does not fit its model.
    """
    name, spec = parse_source_spec(text)
    backbone_name, sep, weights = spec.rpartition("@")
    if sep and not Path(spec).exists():
        torch.manual_seed(seed)
        size = image_size if weights == RANDOM else input_size or image_size
        backbone = _backbone(spec, backbone_name, weights, in_channels, size)
        classifier = _imagenet_classifier(backbone, weights)
        return Source(name, spec, backbone.eval(), classifier, random_init=weights == RANDOM)
    if not Path(spec).exists():
        raise SourceSpecError(
            f"source {spec!r} is neither <backbone>@random, <backbone>@<weights> (e.g. "
            "mobilenet_v2@IMAGENET1K_V1) nor an existing checkpoint or run directory"
        )
    loaded = load_learner(spec)
    own = loaded.learner if loaded.kind == "meta" else None
    backbone = loaded.learner.backbone.eval()
    return Source(name, spec, backbone, loaded.classifier, own, loaded.config.data)


def _backbone(spec: str, name: str, weights: str, channels: int, size: int) -> Backbone:
    try:
        return create_backbone(
            name,
            None if weights == RANDOM else weights,
            download=False,
            image_size=size,
            in_channels=channels,
        )
    except UnknownBackboneError as err:
        raise SourceSpecError(f"source {spec!r}: {err}") from None
    except WeightsError as err:
        raise SourceSpecError(
            f"source {spec!r}: {err} (weights are read from the torch hub cache; "
            "`make weights` installs torchvision's MobileNetV2 ImageNet weights there)"
        ) from None


def _imagenet_classifier(backbone: Backbone, weights: str) -> nn.Linear | None:
    """The ImageNet classifier that came with torchvision's weights (for LEEP and NCE)."""
    if weights == RANDOM or not isinstance(backbone, TorchvisionBackbone):
        return None
    state = torchvision_state_dict(backbone.name, weights, download=False)
    head = [k for k in state if k.startswith(backbone.head_prefixes) and state[k].dim() == 2]
    if len(head) != 1:
        return None
    weight, bias = state[head[0]], state[head[0].removesuffix("weight") + "bias"]
    classifier = nn.Linear(weight.shape[1], weight.shape[0])
    classifier.load_state_dict({"weight": weight, "bias": bias})
    return classifier.eval()
