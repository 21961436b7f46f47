"""What every command shares: exit codes, the configuration as the command line gives it, the pass summary line."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from loguru import logger

from reconciler import errors, logs

if TYPE_CHECKING:
    from reconciler.config import Config
    from reconciler.passes import PassSummary

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DEGRADED = 75

#: What the operator must fix: exit 2, and systemd does not restart on it.
USAGE_ERRORS = (errors.ConfigError, errors.DriverLoadError, errors.SchemaError, errors.SigningKeyError)


def configuration(args: argparse.Namespace, *, resolve_files: bool = True) -> Config:
    """The validated configuration; every problem of the file (driver options included) at once."""
    # here, not above: the command line imports this module for its exit codes, `--help` needs no settings
    from reconciler import app
    from reconciler import config as config_module

    cfg = config_module.load_config(
        getattr(args, "config", config_module.DEFAULT_CONFIG_PATH),
        resolve_files=resolve_files,
        driver_settings=app.driver_settings,
    )
    logs.configure(getattr(args, "log_format", cfg.log.format), cfg.log.level)  # --log-format wins
    return cfg


def report(summary: PassSummary) -> None:
    """The one summary line of a pass (docs/cli.md §5)."""
    (logger.warning if summary.is_degraded else logger.info)(summary.line())
