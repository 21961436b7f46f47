"""sd_notify(3) without a dependency: datagrams to `$NOTIFY_SOCKET` (READY, STATUS, WATCHDOG, STOPPING)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from loguru import logger


class Notifier:
    """Talks to systemd when it asked us to (`Type=notify`); a no-op otherwise."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        watchdog = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            watchdog = int(usec)
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=watchdog)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def watchdog_seconds(self) -> float | None:
        """How often systemd expects a WATCHDOG=1 at the latest (None: no watchdog)."""
        return self.watchdog_usec / 1_000_000 if self.watchdog_usec else None

    def send(self, **fields: str) -> None:
        if self._sock is None or self.address is None:
            return
        address = self.address
        if address.startswith("@"):  # abstract namespace socket
            address = "\0" + address[1:]
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            self._sock.sendto(message, address)
        except OSError as exc:  # systemd gone or socket full: never let notification break the daemon
            logger.debug("sd_notify to {} failed: {}", self.address, exc)

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status)

    def status(self, text: str) -> None:
        self.send(STATUS=text)

    def watchdog(self) -> None:
        self.send(WATCHDOG="1")

    def stopping(self) -> None:
        self.send(STOPPING="1", STATUS="stopping")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
