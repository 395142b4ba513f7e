"""The configuration file: the whole-file model (its `sources` built from the platform
registry), field building blocks (`fields`) and error formatting."""

from shared.config.model import (
    CONFIG_PATH_ENV,
    DEFAULT_CONFIG_PATH,
    Alerts,
    Config,
    ConfigError,
    Destination,
    DispatchSettings,
    Notify,
    Retention,
    StateSettings,
    Timing,
    VerifySettings,
    Webhook,
    config_json_schema,
    config_model,
    load_config,
    parse_config,
)

__all__ = [
    "CONFIG_PATH_ENV",
    "DEFAULT_CONFIG_PATH",
    "Alerts",
    "Config",
    "ConfigError",
    "Destination",
    "DispatchSettings",
    "Notify",
    "Retention",
    "StateSettings",
    "Timing",
    "VerifySettings",
    "Webhook",
    "config_json_schema",
    "config_model",
    "load_config",
    "parse_config",
]
