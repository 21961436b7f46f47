"""Settings models and configuration loading (docs/configuration.md).

`values` holds the names, bounds and value types; `models` the sections and the whole `Config`;
`secrets` what makes a key secret and how its `X_file` form is read; `loading` the layers (file, then
environment) and `load_config`, which reports every problem at once.
"""

from __future__ import annotations

from reconciler.config.database import DatabaseSettings
from reconciler.config.loading import load_config, validate_driver_settings
from reconciler.config.models import (
    ApiSettings,
    Config,
    DaemonSettings,
    HttpSettings,
    LicenseSettings,
    LogSettings,
    PostSettleSettings,
    ProviderConfig,
    ReconcileSettings,
    WebhookSettings,
)
from reconciler.config.values import (
    DEFAULT_CONFIG_PATH,
    ENV_NESTING,
    ENV_PREFIX,
    MASK,
    MAX_BATCH_SIZE,
    MAX_DURATION,
    NOT_CONFIGURATION,
    UNRESOLVED_SECRET,
    DriverSettingsLookup,
    Duration,
    PositiveDuration,
    ShortDuration,
    WholeNumber,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_NESTING",
    "ENV_PREFIX",
    "MASK",
    "MAX_BATCH_SIZE",
    "MAX_DURATION",
    "NOT_CONFIGURATION",
    "UNRESOLVED_SECRET",
    "ApiSettings",
    "Config",
    "DaemonSettings",
    "DatabaseSettings",
    "DriverSettingsLookup",
    "Duration",
    "HttpSettings",
    "LicenseSettings",
    "LogSettings",
    "PositiveDuration",
    "PostSettleSettings",
    "ProviderConfig",
    "ReconcileSettings",
    "ShortDuration",
    "WebhookSettings",
    "WholeNumber",
    "load_config",
    "validate_driver_settings",
]
