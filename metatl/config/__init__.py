"""Typed run configuration: dataclass schema with a domain per number, bounded YAML files,
dotted overrides, no interpolation unless asked for."""

from metatl.config.errors import ConfigError
from metatl.config.load import (
    config_from_dict,
    config_to_dict,
    flatten,
    load_config,
    parse_overrides,
)
from metatl.config.schema import (
    AdaptConfig,
    CompareConfig,
    DataConfig,
    EpisodesConfig,
    FineTuneConfig,
    LayersConfig,
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
    "AdaptConfig",
    "CompareConfig",
    "ConfigError",
    "DataConfig",
    "EpisodesConfig",
    "FineTuneConfig",
    "LayersConfig",
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
