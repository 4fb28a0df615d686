"""A sweep spec, the YAML that ``wandb sweep`` takes, checked before any trial runs.

The checks: W&B's own sweep-config schema; every parameter is a dotted config key (what
``python -m metatl.train`` takes as an override); every value the search can produce is a
valid config on top of the preset and the fixed values (each listed value, and the 1st,
50th and 99th percentile of each distribution, written as the agent writes it); the
command passes the parameters in a form the train CLI reads, and its ``--config`` exists.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metatl.config import ConfigError, load_config, parse_overrides
from metatl.config.yaml_reader import read_yaml
from metatl.sweeping.command import ARGS_MACROS, DEFAULT_COMMAND, format_value
from metatl.sweeping.engine import fill_defaults, percentiles, schema_violations
from metatl.tracking import config_keys

__all__ = ["RESERVED_KEYS", "SweepSpec", "SweepSpecError", "load_spec", "spec_from_dict"]

# Set by the sweep for every trial, so a spec must not search them.
RESERVED_KEYS = ("out_dir", "name")
METHODS = ("grid", "random", "bayes")
_PERCENTILES = (0.01, 0.5, 0.99)


class SweepSpecError(ValueError):
    """A sweep spec that W&B or the config would reject; the message names the file and key."""


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep spec.

    Attributes:
        source: Where it came from (a file name), for messages.
        config: The spec as written.
        filled: The spec with W&B's defaults filled in; what the search engine gets.
        preset: The command's ``--config`` file, or None.
    """

    source: str
    config: dict[str, Any]
    filled: dict[str, Any]
    preset: Path | None

    @property
    def method(self) -> str:
        return str(self.config["method"])

    @property
    def metric(self) -> str | None:
        """Name of the metric to optimise, or None."""
        metric = self.filled.get("metric")
        return str(metric["name"]) if metric else None

    @property
    def goal(self) -> str:
        """``maximize`` or ``minimize`` (W&B's default)."""
        return str((self.filled.get("metric") or {}).get("goal", "minimize"))

    @property
    def target(self) -> float | None:
        """The sweep ends once a finished trial reaches this metric value."""
        return (self.filled.get("metric") or {}).get("target")

    @property
    def run_cap(self) -> int | None:
        return self.config.get("run_cap")

    @property
    def command(self) -> list[str]:
        return [str(c) for c in self.config.get("command") or DEFAULT_COMMAND]

    @property
    def program(self) -> str | None:
        return self.config.get("program")

    @property
    def fixed(self) -> dict[str, Any]:
        """Parameters with a single ``value``."""
        params = self.config["parameters"]
        return {k: p["value"] for k, p in params.items() if "value" in p}

    @property
    def searched(self) -> list[str]:
        """Parameters the search varies, in the spec's order."""
        return [k for k, p in self.config["parameters"].items() if "value" not in p]

    @property
    def args_macro(self) -> str:
        """The ``${args...}`` macro through which the command passes parameters."""
        return next(m for m in ARGS_MACROS if m in self.command)

    def check_overrides(self, overrides: Sequence[str]) -> list[str]:
        """Overrides for every trial (``key=value``, ``--key=value``, ``--key value``),
        normalised to ``key=value`` and checked on top of the preset and the fixed values.

        Raises:
            SweepSpecError: A key the sweep sets or searches, or an invalid config.
        """
        normalised = parse_overrides(list(overrides))
        for override in normalised:
            key = override.split("=", 1)[0]
            if key in RESERVED_KEYS:
                raise SweepSpecError(f"{key} is set by the sweep for every trial; drop {override}")
            if key in self.config["parameters"]:
                raise SweepSpecError(
                    f"{key} is a parameter of {self.source}; change it there, not with {override}"
                )
        fixed = [f"{k}={format_value(v)}" for k, v in self.fixed.items()]
        try:
            load_config(self.preset, [*fixed, *normalised])
        except ValueError as err:
            raise SweepSpecError(f"overrides {' '.join(normalised)}: {err}") from None
        return normalised


def load_spec(path: str | Path, root: str | Path | None = None) -> SweepSpec:
    """Read and check a sweep spec file.

    Args:
        path: The YAML file.
        root: Directory the command runs in (relative ``--config`` paths are resolved from
            it); default the current directory.

    Raises:
        SweepSpecError: The file is missing, unreadable, larger than 256 KiB, expands to too
            much (YAML aliases; see :mod:`metatl.config.yaml_reader`), or fails a check.
    """
    try:
        config = read_yaml(path, "sweep spec")
    except ConfigError as err:
        raise SweepSpecError(str(err)) from None
    return spec_from_dict(config, source=str(path), root=root)


def spec_from_dict(
    config: Any, *, source: str = "sweep spec", root: str | Path | None = None
) -> SweepSpec:
    """Check a sweep spec given as a mapping (see :func:`load_spec`)."""
    if not isinstance(config, Mapping):
        raise SweepSpecError(f"{source} must be a mapping, got {type(config).__name__}")
    config = dict(config)
    violations = schema_violations(config)
    if violations:
        raise SweepSpecError(
            f"{source} does not follow W&B's sweep schema: {'; '.join(violations)}"
        )
    if config.get("method") not in METHODS:
        raise SweepSpecError(
            f"{source}: method {config.get('method')!r} cannot run offline; use one of "
            f"{', '.join(METHODS)}"
        )
    if ("early_terminate" in config or config["method"] == "bayes") and "metric" not in config:
        raise SweepSpecError(f"{source}: bayes search and early_terminate need a metric")
    _check_keys(config["parameters"], source)
    command = _check_command(config, source)
    preset = _preset(command, source, Path(root) if root is not None else Path.cwd())
    _check_values(config["parameters"], preset, source)
    return SweepSpec(source, config, fill_defaults(config), preset)


def _check_keys(parameters: Mapping[str, Any], source: str) -> None:
    known = config_keys()
    for key, param in parameters.items():
        if isinstance(param, Mapping) and "parameters" in param:
            raise SweepSpecError(
                f"{source}: parameter {key!r} has nested parameters; name each parameter by "
                "its dotted config key instead (e.g. model.maml.inner_lr)"
            )
        if key in RESERVED_KEYS:
            raise SweepSpecError(
                f"{source}: parameter {key!r} is set by the sweep for every trial "
                f"({', '.join(RESERVED_KEYS)}); remove it"
            )
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else " (see the keys of RunConfig)"
            raise SweepSpecError(f"{source}: parameter {key!r} is not a config key{hint}")


def _check_command(config: Mapping[str, Any], source: str) -> list[str]:
    command = config.get("command")
    if command is not None and not all(isinstance(c, str) for c in command):
        raise SweepSpecError(f"{source}: command must be a list of strings, got {command}")
    command = list(command or DEFAULT_COMMAND)
    if not any(m in command for m in ARGS_MACROS):
        raise SweepSpecError(
            f"{source}: the command must pass the parameters as one of "
            f"{', '.join(ARGS_MACROS)} (forms the train CLI reads); got {command}"
        )
    if "${program}" in command and not config.get("program"):
        raise SweepSpecError(f"{source}: the command runs ${{program}} but there is no program")
    return command


def _preset(command: Sequence[str], source: str, root: Path) -> Path | None:
    for i, item in enumerate(command):
        if item.startswith("--config="):
            value = item.split("=", 1)[1]
        elif item == "--config" and i + 1 < len(command):
            value = command[i + 1]
        else:
            continue
        path = Path(value) if Path(value).is_absolute() else root / value
        if not path.is_file():
            raise SweepSpecError(
                f"{source}: the command's --config {value} does not exist in {root} (run the "
                "sweep from the directory the command expects, e.g. the repository root)"
            )
        return path
    return None


def _check_values(parameters: Mapping[str, Any], preset: Path | None, source: str) -> None:
    fixed = [f"{k}={format_value(p['value'])}" for k, p in parameters.items() if "value" in p]
    try:
        load_config(preset, fixed)
    except ValueError as err:
        raise SweepSpecError(
            f"{source}: the fixed values do not make a valid config: {err}"
        ) from None
    for key, param in parameters.items():
        if "value" in param:
            continue
        for value in _candidates(key, param):
            try:
                load_config(preset, [*fixed, f"{key}={format_value(value)}"])
            except ValueError as err:
                raise SweepSpecError(
                    f"{source}: parameter {key} value {format_value(value)} is not valid: {err}"
                ) from None


def _candidates(key: str, param: Mapping[str, Any]) -> list[Any]:
    if "values" in param:
        return list(param["values"])
    return percentiles(key, param, _PERCENTILES)
