"""Load a :class:`RunConfig` from YAML plus ``key=value`` / ``--key=value`` overrides."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metatl.config.schema import RunConfig

__all__ = ["ConfigError", "config_to_dict", "flatten", "load_config", "parse_overrides"]

CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": ("glyphs", "image_folder", "omniglot", "mini_imagenet"),
    "model.algorithm": ("protonet", "maml", "fomaml", "anil", "metasgd", "linear", "finetune"),
    "model.maml.head": ("zero", "learned"),
    "model.maml.bn": ("transductive", "running"),
    "linear_probe.normalize": ("none", "l2", "center", "center_l2"),
    "finetune.normalize": ("none", "l2", "center", "center_l2"),
    "finetune.batch_norm": ("frozen", "adapt"),
    "finetune.optimizer": ("sgd", "adam"),
    "model.distance": ("sqeuclidean", "cosine"),
    "pretrain.augment": ("none", "crop", "crop_flip"),
    "tracking.wandb.mode": ("auto", "online", "offline", "disabled"),
    "precision": ("fp32", "bf16", "fp16"),
}
POSITIVE = (
    "data.image_size",
    "episodes.way",
    "episodes.shot",
    "episodes.query",
    "train.meta_batch",
    "train.log_every",
    "train.val_every",
    "train.val_episodes",
    "train.val_way",
    "train.val_shot",
    "train.val_query",
    "test.way",
    "test.query",
    "test.episodes",
    "pretrain.epochs",
    "pretrain.batch_size",
    "pretrain.val_every",
)


NOT_META_TRAINED = ("linear", "finetune")


class ConfigError(ValueError):
    """A configuration is invalid; the message names the key and what is allowed."""


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


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Schema defaults, then the YAML file, then the overrides; validated and typed.

    Args:
        path: A YAML file of (nested) keys of :class:`RunConfig`, or None for the defaults.
        overrides: ``key=value`` strings with dotted keys, e.g. ``optim.lr=3e-4``.

    Raises:
        ConfigError: Unknown key, wrong type, value outside the allowed set, unreadable file.
    """
    return _merge(_read_yaml(Path(path)) if path is not None else {}, overrides)


def config_from_dict(values: dict[str, Any], overrides: Sequence[str] = ()) -> RunConfig:
    """A :class:`RunConfig` from a plain nested dict (e.g. one stored in a checkpoint), with
    ``key=value`` overrides applied on top; validated as :func:`load_config`."""
    return _merge(values, overrides)


def _merge(values: Any, overrides: Sequence[str]) -> RunConfig:
    try:
        dotlist = OmegaConf.from_dotlist(parse_overrides(list(overrides)))
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), values, dotlist)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err)) from None
    except yaml.YAMLError as err:
        reason = " ".join(str(err).split())
        raise ConfigError(f"cannot parse overrides {' '.join(overrides)}: {reason}") from None
    validate(config)
    return config


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The config as a plain nested dict (JSON and YAML serialisable)."""
    return dataclasses.asdict(config)


def validate(config: RunConfig) -> None:
    """Check value ranges and choices that types alone cannot express."""
    values = flatten(config_to_dict(config))
    for key, allowed in CHOICES.items():
        if values[key] not in allowed:
            raise ConfigError(
                f"{key}={values[key]!r} is not allowed; choose one of: {', '.join(allowed)}"
            )
    for key in POSITIVE:
        if values[key] < 1:
            raise ConfigError(f"{key} must be a positive integer, got {values[key]}")
    if not values["test.shots"] or any(s < 1 for s in values["test.shots"]):
        raise ConfigError(
            f"test.shots must be a non-empty list of positive integers, got {values['test.shots']}"
        )
    for key in ("optim.lr",):
        if values[key] <= 0:
            raise ConfigError(f"{key} must be > 0, got {values[key]}")
    if config.train.steps < 0:
        raise ConfigError(f"train.steps must be >= 0 (0: test only), got {config.train.steps}")
    if config.model.algorithm in NOT_META_TRAINED and config.train.steps:
        raise ConfigError(
            f"model.algorithm={config.model.algorithm} adapts per episode and is not "
            "meta-trained: set train.steps=0, and model.pretrained to the backbone to use"
        )
    if config.model.algorithm in NOT_META_TRAINED and not config.model.pretrained:
        raise ConfigError(
            f"model.algorithm={config.model.algorithm} needs a trained backbone: set "
            "model.pretrained to a run's checkpoint (runs/<run>/best.pt), a weights file or a "
            "torchvision weight name (IMAGENET1K_V1)"
        )
    maml = config.model.maml
    if not re.fullmatch(r"all|head|top:[1-9]\d*", maml.adapt):
        raise ConfigError(f"model.maml.adapt={maml.adapt!r} is not allowed; use all, head or top:N")
    if maml.inner_steps < 0 or maml.test_inner_steps < 0 or maml.inner_lr <= 0:
        raise ConfigError(
            "model.maml.inner_steps and test_inner_steps must be >= 0 and inner_lr > 0, got "
            f"{maml.inner_steps}, {maml.test_inner_steps}, {maml.inner_lr}"
        )
    ways = (config.episodes.way, config.train.val_way, config.test.way)
    if config.model.algorithm != "protonet" and maml.head == "learned" and len(set(ways)) > 1:
        raise ConfigError(
            "model.maml.head=learned fixes the way: episodes.way, train.val_way and test.way "
            f"must be equal, got {ways[0]}, {ways[1]}, {ways[2]} (or use model.maml.head=zero)"
        )
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", config.device):
        raise ConfigError(
            f"device={config.device!r} is not allowed; use auto, cpu, cuda, cuda:N or mps"
        )
    if config.train.checkpoint_every < 0:
        raise ConfigError(
            f"train.checkpoint_every must be >= 0 (0: at validation only), "
            f"got {config.train.checkpoint_every}"
        )
    p = config.pretrain
    for key, value, ok, allowed in (
        ("pretrain.lr", p.lr, p.lr > 0, "> 0"),
        ("pretrain.momentum", p.momentum, 0 <= p.momentum < 1, "in [0, 1)"),
        ("pretrain.weight_decay", p.weight_decay, p.weight_decay >= 0, ">= 0"),
        ("pretrain.label_smoothing", p.label_smoothing, 0 <= p.label_smoothing < 1, "in [0, 1)"),
        ("pretrain.crop_padding", p.crop_padding, p.crop_padding >= 0, ">= 0"),
        ("pretrain.batch_size", p.batch_size, p.batch_size >= 2, ">= 2 (BatchNorm)"),
    ):
        if not ok:
            raise ConfigError(f"{key} must be {allowed}, got {value}")
    if config.episodes.way < 2 or config.test.way < 2 or config.train.val_way < 2:
        raise ConfigError("episodes.way, train.val_way and test.way must be at least 2")


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys, got {type(data).__name__}"
        )
    try:
        return OmegaConf.create(data)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {_describe(err)}") from None


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
