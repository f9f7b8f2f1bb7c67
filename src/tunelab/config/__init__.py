"""Run configuration: schema (pydantic) and loading (YAML + dotted overrides)."""

from tunelab.config.load import apply_overrides, build_config, config_to_dict, load_config, redact, save_config
from tunelab.config.schema import RunConfig

__all__ = ["RunConfig", "apply_overrides", "build_config", "config_to_dict", "load_config", "redact", "save_config"]
