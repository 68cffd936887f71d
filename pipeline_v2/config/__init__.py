"""The configuration: stages.json (or YAML) loaded and validated into a frozen `Config`."""

from __future__ import annotations

from pipeline_v2.config.loading import (
    default_config_path,
    json_schema,
    load_config,
    parse_config,
    read_document,
)
from pipeline_v2.config.sections import (
    COMMAND_FIELDS,
    DEFAULT_CONFIG_NAME,
    TEMPLATE_FIELDS,
    Config,
    DaemonConfig,
    DeployStageConfig,
    NotifyConfig,
    OptunaConfig,
    RestartConfig,
    RetryConfig,
    StageConfig,
    parse_duration,
)

__all__ = [
    "COMMAND_FIELDS", "DEFAULT_CONFIG_NAME", "TEMPLATE_FIELDS", "Config", "DaemonConfig",
    "DeployStageConfig", "NotifyConfig", "OptunaConfig", "RestartConfig", "RetryConfig",
    "StageConfig", "default_config_path", "json_schema", "load_config", "parse_config",
    "parse_duration", "read_document",
]
