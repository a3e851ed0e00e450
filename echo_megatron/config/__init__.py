"""Structured configs (OmegaConf) with recipe inheritance, presets and dotted overrides."""

from echo_megatron.config.loader import ConfigError, load_config, to_yaml
from echo_megatron.config.schema import ExperimentConfig

__all__ = ["ConfigError", "ExperimentConfig", "load_config", "to_yaml"]
