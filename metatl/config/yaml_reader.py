"""Read YAML as bounded plain data: every YAML file metatl reads goes through here.

A YAML file is small, but its anchors and aliases can make it expand to a recursive
structure (``a: &a [*a]``) or to billions of values (the "billion laughs" document).
:func:`read_yaml` caps the file's size, and :func:`check_bounded` walks the loaded data
counting every value as often as it is reached (an alias counts each time it is used), so a
bomb fails in one line long before anything copies or merges it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Set
from pathlib import Path
from typing import Any

import yaml

from metatl.config.errors import ConfigError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "check_bounded", "one_line", "read_yaml"]

MAX_BYTES = 256 * 1024  # a run config or a sweep spec is a few KiB
MAX_NODES = 100_000  # values after expanding aliases
MAX_DEPTH = 32  # nesting levels (a run config has 3)
_CONTAINERS = (Mapping, list, tuple, Set)


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """The plain data (dicts, lists, scalars) of a YAML file, checked by :func:`check_bounded`.

    Args:
        path: The file.
        what: What the file is, for messages (``config file``, ``sweep spec``).

    Raises:
        ConfigError: Missing or unreadable, larger than :data:`MAX_BYTES`, not UTF-8, not
            YAML, or its data is recursive, nests too deep or expands too much.
    """
    path = Path(path)
    source = f"{what} {path}"
    if not path.is_file():
        raise ConfigError(f"{source} does not exist")
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{source} cannot be read: {err.strerror or err}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{source} is larger than {MAX_BYTES // 1024} KiB; refusing to read it")
    try:
        text = raw.decode("utf-8")
        _check_nesting(text, source)
        data = yaml.safe_load(text)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{source} is not UTF-8 text: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML: {one_line(str(err))}") from None
    except RecursionError:
        raise ConfigError(f"{source} nests deeper than {MAX_DEPTH} levels") from None
    check_bounded(data, source)
    return data


_OPEN = (
    yaml.BlockMappingStartToken,
    yaml.BlockSequenceStartToken,
    yaml.FlowMappingStartToken,
    yaml.FlowSequenceStartToken,
)
_CLOSE = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)


def _check_nesting(text: str, source: str) -> None:
    """Refuse more than :data:`MAX_DEPTH` open collections while scanning, before PyYAML's
    parser, whose time grows with the square of the nesting, gets to the whole text."""
    depth = 0
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, _OPEN):
            depth += 1
            if depth > MAX_DEPTH:
                line = token.start_mark.line + 1
                raise ConfigError(f"{source} nests deeper than {MAX_DEPTH} levels (line {line})")
        elif isinstance(token, _CLOSE):
            depth -= 1


def check_bounded(data: Any, source: str) -> None:
    """Refuse data that refers to itself, nests too deep or expands to too many values.

    Shared references (YAML aliases, or one object twice in an unpickled dict) are counted
    each time they are reached, as every later copy or merge would expand them.

    Args:
        data: Plain data: mappings, lists, sets, tuples and scalars.
        source: What the data is, for messages (``config file x.yaml``).

    Raises:
        ConfigError: Naming ``source`` and, for a cycle or depth, the key.
    """
    _Walk(source).visit(data, "", 0)


class _Walk:
    """One depth-first walk of :func:`check_bounded`: the count and the open containers."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.count = 0
        self.open: set[int] = set()

    def visit(self, node: Any, key: str, depth: int) -> None:
        self.count += 1
        if self.count > MAX_NODES:
            raise ConfigError(
                f"{self.source} expands to more than {MAX_NODES:,} values (aliases count "
                "each time they are used); refusing it"
            )
        if not isinstance(node, _CONTAINERS) or not node:
            return
        where = f" at '{key}'" if key else ""
        if id(node) in self.open:
            raise ConfigError(
                f"{self.source} refers to itself{where} (a recursive anchor or reference); "
                "it must be a tree"
            )
        if depth >= MAX_DEPTH:
            raise ConfigError(f"{self.source} nests deeper than {MAX_DEPTH} levels{where}")
        self.open.add(id(node))
        for child_key, child in _children(node, key):
            self.visit(child, child_key, depth + 1)
        self.open.discard(id(node))


def _children(node: Mapping | list | tuple | Set, key: str) -> Iterator[tuple[str, Any]]:
    prefix = f"{key}." if key else ""
    items = node.items() if isinstance(node, Mapping) else enumerate(node)
    return ((f"{prefix}{k}", v) for k, v in items)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(text.split())
