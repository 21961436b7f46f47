"""What systemd asked for, read from the environment (sd_notify(3), sd_watchdog_enabled(3))."""

from __future__ import annotations

import os

import pytest

from reconciler.notify import Notifier


def test_without_notify_socket_every_message_is_dropped() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.watchdog_seconds is None
    notifier.ready("started")  # a no-op, never an error
    notifier.watchdog()
    notifier.close()


@pytest.mark.parametrize(
    ("environ", "seconds"),
    [
        ({"WATCHDOG_USEC": "400000"}, 0.4),
        ({"WATCHDOG_USEC": "180000000", "WATCHDOG_PID": str(os.getpid())}, 180.0),
        ({"WATCHDOG_USEC": "180000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),  # meant for another
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "3min"}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
    ],
)
def test_the_watchdog_interval_comes_from_watchdog_usec(
    environ: dict[str, str], seconds: float | None
) -> None:
    assert Notifier.from_env(environ).watchdog_seconds == seconds
