"""Running the real `reconciler` command from tests: an environment that leaks nothing of the caller's."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

#: Variables that would change what a subprocess does: configuration, systemd hand-overs.
FOREIGN_ENV = ("RECONCILER_", "CREDENTIALS_DIRECTORY", "JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any RECONCILER_* setting or systemd variable, plus `extra`."""
    return {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV)} | extra


def minutes_ago(minutes: float) -> datetime:
    """A creation time inside the default `max_age`: subprocesses use the real clock."""
    return datetime.now(UTC) - timedelta(minutes=minutes)
