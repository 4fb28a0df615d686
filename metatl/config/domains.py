"""The allowed range of every numeric config key, stated once, next to its field.

A schema field carries its domain in its metadata::

    steps: int = field(default=4000, metadata=between(0, STEPS, "0: test only"))
    lr: float = field(default=1e-3, metadata=positive(LR))

and :func:`check_domains` walks every field of a config: nan and infinities are outside
every domain, a list of numbers must be non-empty (unless its domain allows it) with every
item inside.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass
from typing import Any

from metatl.config.errors import ConfigError

__all__ = ["Domain", "between", "check_domains", "fraction", "numeric_fields", "positive"]

_KEY = "domain"
NUMBERS = (int, float, list[int], list[float])


@dataclass(frozen=True)
class Domain:
    """A closed or half-open interval of numbers.

    Attributes:
        lo: Smallest allowed value (excluded when ``lo_open``).
        hi: Largest allowed value (excluded when ``hi_open``).
        lo_open: Whether ``lo`` itself is outside.
        hi_open: Whether ``hi`` itself is outside.
        note: What special values mean, e.g. ``0: test only``.
        empty: Whether a list may be empty (its meaning then in ``note``).
    """

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""
    empty: bool = False

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not math.isfinite(value):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def describe(self, kind: type) -> str:
        """E.g. ``an integer in [0, 10000000] (0: test only)``, ``a finite number in (0, 10]``."""
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        interval = f"{left}{_number(self.lo)}, {_number(self.hi)}{right}"
        noun = {
            int: "an integer",
            float: "a finite number",
            list[int]: "a list of integers" if self.empty else "a non-empty list of integers",
            list[float]: "a non-empty list of finite numbers",
        }[kind]
        note = f" ({self.note})" if self.note else ""
        return f"{noun} in {interval}{note}"


def between(
    lo: float, hi: float, note: str = "", *, hi_open: bool = False, empty: bool = False
) -> dict[str, Domain]:
    """Field metadata: ``lo <= value <= hi`` (``< hi`` with ``hi_open``); for a list field,
    ``empty`` allows an empty list."""
    return {_KEY: Domain(lo, hi, hi_open=hi_open, note=note, empty=empty)}


def positive(hi: float, note: str = "") -> dict[str, Domain]:
    """Field metadata: ``0 < value <= hi``."""
    return {_KEY: Domain(0, hi, lo_open=True, note=note)}


def fraction(note: str = "") -> dict[str, Domain]:
    """Field metadata: ``0 <= value < 1``."""
    return {_KEY: Domain(0, 1, hi_open=True, note=note)}


def numeric_fields(cls: type) -> dict[str, tuple[type, Domain | None]]:
    """Every numeric leaf of a (nested) config dataclass: dotted key -> (type, domain).

    Booleans are not numbers here; a numeric field without a domain maps to None.
    """
    return dict(_numeric_fields(cls, ""))


@functools.cache
def _numeric_fields(cls: type, prefix: str) -> tuple[tuple[str, tuple[type, Domain | None]], ...]:
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, tuple[type, Domain | None]]] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            out += _numeric_fields(hint, f"{key}.")  # type: ignore[arg-type]
        elif hint in NUMBERS:
            out.append((key, (hint, f.metadata.get(_KEY))))
    return tuple(out)


def check_domains(config: Any) -> None:
    """Check every numeric field of ``config`` (a config dataclass) against its domain.

    Raises:
        ConfigError: ``<key> must be <domain>, got <value>``, for the first value outside.
        TypeError: A numeric field of the schema states no domain (a bug in the schema).
    """
    for key, (kind, domain) in numeric_fields(type(config)).items():
        if domain is None:
            raise TypeError(f"config field {key} states no domain; add metadata=between(...)")
        value = _get(config, key)
        items = value if isinstance(value, list) else [value]
        empty = isinstance(value, list) and not value and not domain.empty
        if empty or not all(v in domain for v in items):
            raise ConfigError(f"{key} must be {domain.describe(kind)}, got {value}")


def _get(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def _number(x: float) -> str:
    if float(x).is_integer() and abs(x) < 1e16:
        return str(int(x))
    return f"{x:g}"
