"""The backbone registry: ``@register_backbone(name)``, ``create_backbone``, ``list_backbones``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

from metatl.backbones.base import Backbone

__all__ = ["UnknownBackboneError", "create_backbone", "list_backbones", "register_backbone"]

BackboneFactory = Callable[..., Backbone]
F = TypeVar("F", bound=BackboneFactory)

_REGISTRY: dict[str, BackboneFactory] = {}


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


def list_backbones() -> list[str]:
    """Names of every registered backbone, sorted."""
    return sorted(_REGISTRY)


def create_backbone(name: str, **kwargs: object) -> Backbone:
    """Build the backbone registered as ``name``.

    Args:
        name: A name from :func:`list_backbones`.
        **kwargs: Passed to the factory (e.g. ``in_channels``, ``image_size``).

    Raises:
        UnknownBackboneError: If ``name`` is not registered; the message lists the names.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UnknownBackboneError(
            f"unknown backbone '{name}'; registered backbones: {', '.join(list_backbones())}"
        ) from None
    return factory(**kwargs)
