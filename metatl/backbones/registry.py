"""The backbone registry: ``@register_backbone(name)``, ``create_backbone``, ``list_backbones``.

Besides single names, a *family* answers every ``<prefix>:<model name>`` (``timm:resnet18``),
registered with ``@register_backbone_family(prefix)``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import TypeVar

from metatl.backbones.base import Backbone

__all__ = [
    "UnknownBackboneError",
    "create_backbone",
    "list_backbone_families",
    "list_backbones",
    "register_backbone",
    "register_backbone_family",
]

BackboneFactory = Callable[..., Backbone]
F = TypeVar("F", bound=BackboneFactory)

_REGISTRY: dict[str, BackboneFactory] = {}
_FAMILIES: dict[str, BackboneFactory] = {}


class UnknownBackboneError(KeyError):
    """No backbone is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def register_backbone(name: str) -> Callable[[F], F]:
    """Register a factory ``(**kwargs) -> Backbone`` under ``name``.

    Registering a name twice replaces the first factory with a warning.
    """

    def decorator(factory: F) -> F:
        if name in _REGISTRY:
            warnings.warn(
                f"backbone '{name}' is registered twice; the later one wins", stacklevel=2
            )
        _REGISTRY[name] = factory
        return factory

    return decorator


def register_backbone_family(prefix: str) -> Callable[[F], F]:
    """Register a factory ``(model_name, **kwargs) -> Backbone`` for ``<prefix>:<model_name>``."""

    def decorator(factory: F) -> F:
        if prefix in _FAMILIES:
            warnings.warn(
                f"backbone family '{prefix}:' is registered twice; the later one wins",
                stacklevel=2,
            )
        _FAMILIES[prefix] = factory
        return factory

    return decorator


def list_backbones() -> list[str]:
    """Names of every registered backbone, sorted (families not included)."""
    return sorted(_REGISTRY)


def list_backbone_families() -> list[str]:
    """Registered family prefixes, sorted (``create_backbone("<prefix>:<model name>")``)."""
    return sorted(_FAMILIES)


def _factory(name: str) -> BackboneFactory:
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix, sep, model_name = name.partition(":")
    if sep and prefix in _FAMILIES and model_name:
        family = _FAMILIES[prefix]
        return lambda **kwargs: family(model_name, **kwargs)
    families = "".join(f", {p}:<model name>" for p in list_backbone_families())
    raise UnknownBackboneError(
        f"unknown backbone '{name}'; registered backbones: {', '.join(list_backbones())}{families}"
    )


def create_backbone(
    name: str,
    pretrained: str | os.PathLike[str] | bool | None = None,
    *,
    download: bool | None = None,
    **kwargs: object,
) -> Backbone:
    """Build the backbone registered as ``name``, optionally with pretrained weights.

    Args:
        name: A name from :func:`list_backbones`, or ``<family>:<model name>``
            (``timm:resnet18``).
        pretrained: ``None`` for a fresh initialisation; a weight name the backbone knows
            (torchvision's ``IMAGENET1K_V1``, ``DEFAULT``); a state-dict file; or a metatl
            checkpoint (its ``backbone.*`` weights). See :mod:`metatl.backbones.weights`.
        download: Whether named weights missing from the cache may be downloaded; ``None``
            allows it unless ``METATL_OFFLINE=1``.
        **kwargs: Passed to the factory (e.g. ``in_channels``, ``image_size``).

    Raises:
        UnknownBackboneError: If ``name`` is not registered; the message lists the names.
        metatl.backbones.weights.WeightsError: If ``pretrained`` cannot be resolved or loaded.
    """
    backbone = _factory(name)(**kwargs)
    if pretrained is not None and pretrained is not False and pretrained != "":
        from metatl.backbones.weights import load_pretrained

        load_pretrained(backbone, pretrained, download=download)
    return backbone
