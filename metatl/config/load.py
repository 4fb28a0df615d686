"""Load a :class:`RunConfig` from YAML plus ``key=value`` / ``--key=value`` overrides.

Configs are data: a ``${...}`` interpolation (OmegaConf's, e.g. ``${oc.env:VAR}``, which
would copy an environment variable into the run's files) is an error unless the caller
asks for it for the user's own file and overrides (``load_config(..., interpolate=True)``,
the CLIs' ``--interpolate``), and a config read back from a checkpoint is never
interpolated. YAML is read through :mod:`metatl.config.yaml_reader`, which bounds what a
file may expand to.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from episodes.datasets import list_datasets
from metatl.algorithms.registry import is_meta_trained, list_learners
from metatl.config.domains import check_domains
from metatl.config.errors import ConfigError
from metatl.config.schema import RunConfig
from metatl.config.yaml_reader import check_bounded, one_line, read_yaml

__all__ = [
    "ConfigError",
    "config_from_dict",
    "config_to_dict",
    "flatten",
    "load_config",
    "parse_overrides",
]

CHOICES: dict[str, tuple[str, ...]] = {
    "model.maml.head": ("zero", "learned"),
    "model.maml.bn": ("transductive", "running"),
    "model.maml.inner_memory": ("store", "checkpoint"),
    "linear_probe.normalize": ("none", "l2", "center", "center_l2"),
    "finetune.normalize": ("none", "l2", "center", "center_l2"),
    "finetune.batch_norm": ("frozen", "adapt"),
    "finetune.optimizer": ("sgd", "adam"),
    "model.distance": ("sqeuclidean", "cosine"),
    "pretrain.augment": ("none", "crop", "crop_flip"),
    "pretrain.objective": ("supervised", "rotation", "simclr", "supervised+rotation"),
    "adapt.method": ("source_only", "dann", "mcc"),
    "adapt.domain_batches": ("joint", "per_domain"),
    "train.gradient_sum": ("all_reduce", "episode_order"),
    "tracking.wandb.mode": ("auto", "online", "offline", "disabled"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
}
# Keys whose value is a non-empty list of distinct items, each one of these.
LIST_CHOICES: dict[str, tuple[str, ...]] = {
    "layers.splits": ("random", "stroke", "radical", "groups"),
    "layers.treatments": ("BnB", "BnB+", "AnB", "AnB+", "random"),
    "compare.probes": ("ncm", "linear"),
    "adapt.test_time": ("adabn", "tent"),
}
LIST_MAY_BE_EMPTY = frozenset({"adapt.test_time"})
MAX_NAME_BYTES = 200  # a file name has 255; leave room for new_directory's "-N"

# Why a ``${`` is refused, by where the config comes from.
_OWN_CONFIG = (
    "interpolation is off because configs are data: write the value itself, or pass "
    "--interpolate to resolve ${...} in your own config file and overrides"
)
_STORED_CONFIG = (
    "a config from a checkpoint or a dict is data and is never interpolated: write the value itself"
)


def parse_overrides(args: Sequence[str]) -> list[str]:
    """Normalise ``key=value``, ``--key=value`` and ``--key value`` into ``key=value``."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            arg = arg[2:]
            if "=" not in arg:
                if i + 1 >= len(args):
                    raise ConfigError(f"override '--{arg}' has no value: use --{arg}=VALUE")
                arg = f"{arg}={args[i + 1]}"
                i += 1
        if "=" not in arg or arg.startswith("="):
            raise ConfigError(f"override '{args[i]}' is not of the form key=value")
        out.append(arg)
        i += 1
    return out


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), *, interpolate: bool = False
) -> RunConfig:
    """Schema defaults, then the YAML file, then the overrides; validated and typed.

    Args:
        path: A YAML file of (nested) keys of :class:`RunConfig`, or None for the defaults.
        overrides: ``key=value`` strings with dotted keys, e.g. ``optim.lr=3e-4``.
        interpolate: Resolve OmegaConf interpolations (``${train.steps}``,
            ``${oc.env:VAR}``) in the file and the overrides; the config holds the resolved
            values. Off by default: a ``${`` anywhere is then an error naming the key.

    Raises:
        ConfigError: Unknown key, wrong type, value outside its domain or the allowed set,
            an interpolation (unless ``interpolate``), an unreadable or oversized file.
    """
    values: Any = {}
    if path is not None:
        values = read_yaml(path, "config file")
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping of keys, got {type(values).__name__}"
            )
        if not interpolate:
            _refuse_interpolation(values, _OWN_CONFIG, where=f" of config file {path}")
    return _merge(values, overrides, None if interpolate else _OWN_CONFIG)


def config_from_dict(values: Mapping[str, Any], overrides: Sequence[str] = ()) -> RunConfig:
    """A :class:`RunConfig` from a plain nested dict (e.g. one stored in a checkpoint), with
    ``key=value`` overrides applied on top; validated as :func:`load_config`, and never
    interpolated (a ``${`` in ``values`` or ``overrides`` is an error naming the key).

    Raises:
        ConfigError: As :func:`load_config`; also for data that refers to itself or
            expands to too many values.
    """
    check_bounded(values, "config")
    return _merge(values, overrides, _STORED_CONFIG)


def _merge(values: Any, overrides: Sequence[str], refuse: str | None) -> RunConfig:
    """Merge ``values`` and ``overrides`` onto the schema; ``refuse``: why ``${`` is an error,
    or None to resolve interpolations."""
    dotted = parse_overrides(list(overrides))
    _refuse_aliases(dotted)
    try:
        dotlist = OmegaConf.from_dotlist(dotted)
        if refuse is not None:
            _refuse_interpolation(values, refuse)
            _refuse_interpolation(OmegaConf.to_container(dotlist, resolve=False), refuse)
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), values, dotlist)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err)) from None
    except yaml.YAMLError as err:
        raise ConfigError(
            f"cannot parse overrides {' '.join(dotted)}: {one_line(str(err))}"
        ) from None
    assert isinstance(config, RunConfig)
    if refuse is None:  # what is stored must not interpolate when read back
        _refuse_interpolation(
            config_to_dict(config), "a stored config must not hold one", where=" (resolved)"
        )
    validate(config)
    return config


def _refuse_aliases(overrides: Sequence[str]) -> None:
    """An override is one value: YAML anchors and aliases there could only make a bomb."""
    for override in overrides:
        value = override.split("=", 1)[1]
        try:
            tokens = list(yaml.scan(value))
        except yaml.YAMLError:
            continue  # not YAML: OmegaConf names the override
        if any(isinstance(t, yaml.AnchorToken | yaml.AliasToken) for t in tokens):
            raise ConfigError(
                f"override {override!r} uses a YAML anchor or alias (& or *); write the value"
            )


def _refuse_interpolation(values: Any, reason: str, key: str = "", where: str = "") -> None:
    """ConfigError for the first string in ``values`` (bounded plain data) holding ``${``.

    Args:
        values: Plain data.
        reason: Why that is refused (the end of the message).
        key: Dotted key of ``values``.
        where: Said after the key, e.g. `` of config file x.yaml``.
    """
    if isinstance(values, str) and "${" in values:
        shown = values if len(values) <= 80 else values[:77] + "..."
        raise ConfigError(f"config key '{key}'{where} holds an interpolation {shown!r}; {reason}")
    prefix = f"{key}." if key else ""
    if isinstance(values, Mapping):
        for k, v in values.items():
            _refuse_interpolation(v, reason, f"{prefix}{k}", where)
    elif isinstance(values, list | tuple):
        for i, v in enumerate(values):
            _refuse_interpolation(v, reason, f"{key}[{i}]", where)


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The config as a plain nested dict (JSON and YAML serialisable)."""
    return dataclasses.asdict(config)


def validate(config: RunConfig) -> None:
    """Check what types alone cannot express: every numeric value against the domain its
    schema field states, the choices, the run name, and the checks across keys."""
    check_domains(config)
    values = flatten(config_to_dict(config))
    # From the registries at check time: what the user registers is a choice too.
    registered = {"data.dataset": list_datasets(), "model.algorithm": list_learners()}
    for key, allowed in {**{k: tuple(v) for k, v in registered.items()}, **CHOICES}.items():
        if values[key] not in allowed:
            raise ConfigError(
                f"{key}={values[key]!r} is not allowed; choose one of: {', '.join(allowed)}"
            )
    for key, allowed in LIST_CHOICES.items():
        _check_list_choice(key, values[key], allowed, empty_ok=key in LIST_MAY_BE_EMPTY)
    _check_name(config.name)
    _check_learner(config)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", config.device):
        raise ConfigError(
            f"device={config.device!r} is not allowed; use auto, cpu, cuda, cuda:N or mps"
        )


def _check_list_choice(
    key: str, items: list[str], allowed: tuple[str, ...], *, empty_ok: bool = False
) -> None:
    unknown = [item for item in items if item not in allowed]
    if unknown or (not items and not empty_ok) or len(set(items)) < len(items):
        problem = (
            f"has {', '.join(map(repr, unknown))}, not allowed"
            if unknown
            else ("is empty" if not items else "names an item twice")
        )
        raise ConfigError(f"{key}={items} {problem}; choose one or more of: {', '.join(allowed)}")


def _check_learner(config: RunConfig) -> None:
    algorithm, maml = config.model.algorithm, config.model.maml
    if not is_meta_trained(algorithm) and config.train.steps:
        raise ConfigError(
            f"model.algorithm={algorithm} adapts per episode and is not "
            "meta-trained: set train.steps=0, and model.pretrained to the backbone to use"
        )
    if not is_meta_trained(algorithm) and not config.model.pretrained:
        raise ConfigError(
            f"model.algorithm={algorithm} needs a trained backbone: set "
            "model.pretrained to a run's checkpoint (runs/<run>/best.pt), a weights file or a "
            "torchvision weight name (IMAGENET1K_V1)"
        )
    if not re.fullmatch(r"all|head|top:[1-9]\d*", maml.adapt):
        raise ConfigError(f"model.maml.adapt={maml.adapt!r} is not allowed; use all, head or top:N")
    ways = (config.episodes.way, config.train.val_way, config.test.way)
    if algorithm == "caml":
        _check_caml(config, ways)
    if algorithm == "imaml":
        _check_imaml(config)
    if algorithm != "protonet" and maml.head == "learned" and len(set(ways)) > 1:
        raise ConfigError(
            "model.maml.head=learned fixes the way: episodes.way, train.val_way and test.way "
            f"must be equal, got {ways[0]}, {ways[1]}, {ways[2]} (or use model.maml.head=zero)"
        )


def _check_imaml(config: RunConfig) -> None:
    maml, lam = config.model.maml, config.model.imaml.lam
    if maml.first_order or maml.meta_sgd:
        raise ConfigError(
            "model.algorithm=imaml takes its meta-gradient from the implicit function, whatever "
            "the inner optimiser: model.maml.first_order and model.maml.meta_sgd must be false"
        )
    if not maml.inner_lr * lam < 2:
        raise ConfigError(
            f"model.maml.inner_lr * model.imaml.lam = {maml.inner_lr} * {lam} >= 2: the "
            "proximal term alone makes the inner loop diverge; lower one of them"
        )


def _check_caml(config: RunConfig, ways: tuple[int, int, int]) -> None:
    caml = config.model.caml
    if caml.dim <= caml.max_way:
        raise ConfigError(
            f"model.caml.dim={caml.dim} leaves no feature dimensions next to the "
            f"model.caml.max_way={caml.max_way} label dimensions: make dim larger than max_way"
        )
    if caml.dim % caml.heads:
        raise ConfigError(f"model.caml.heads={caml.heads} must divide model.caml.dim={caml.dim}")
    if max(ways) > caml.max_way:
        raise ConfigError(
            f"model.caml.max_way={caml.max_way} label slots cannot classify {max(ways)}-way "
            f"episodes (episodes.way, train.val_way, test.way = {ways[0]}, {ways[1]}, "
            f"{ways[2]}): raise model.caml.max_way (before training) or lower the way"
        )


def _check_name(name: str) -> None:
    """``name`` is empty (a name from the learner and the time) or one path component."""
    problem = name and _name_problem(name)
    if problem:
        raise ConfigError(
            f"name={name!r} {problem}; a run name is one folder name inside out_dir (like "
            "trial-001 or my_run.v2), or empty for one made from the learner and the time"
        )


def _name_problem(name: str) -> str:
    if "/" in name or "\\" in name:
        return "has a path separator"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "has a control character"
    if name[0] in ".-":
        return f"starts with {name[0]!r}"
    if name != name.strip():
        return "starts or ends with a space"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return ""


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    reason = str(getattr(err, "msg", None) or err).splitlines()[0]
    if "not in" in reason and key:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        known = _known_keys(parent)
        return f"unknown config key '{key}'; keys here: {', '.join(known)}"
    return f"config key '{key}': {reason}" if key else reason


def _known_keys(parent: str) -> list[str]:
    node: Any = config_to_dict(RunConfig())
    for part in filter(None, parent.split(".")):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    prefix = f"{parent}." if parent else ""
    return [prefix + k for k in node] if isinstance(node, dict) else []


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"a.b.c": leaf}`` (dotted keys, as overrides spell them)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat
