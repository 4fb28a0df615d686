"""Typed run configuration: dataclass schema, YAML files, dotted overrides."""

from metatl.config.load import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    flatten,
    load_config,
    parse_overrides,
)
from metatl.config.schema import (
    DataConfig,
    EpisodesConfig,
    FineTuneConfig,
    LinearProbeConfig,
    MAMLConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    RunConfig,
    TestConfig,
    TrackingConfig,
    TrainConfig,
    WandbConfig,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "EpisodesConfig",
    "FineTuneConfig",
    "LinearProbeConfig",
    "MAMLConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "RunConfig",
    "TestConfig",
    "TrackingConfig",
    "TrainConfig",
    "WandbConfig",
    "config_from_dict",
    "config_to_dict",
    "flatten",
    "load_config",
    "parse_overrides",
]
