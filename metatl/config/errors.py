"""The one exception every configuration check raises."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration is invalid; the message names the key and what is allowed."""
