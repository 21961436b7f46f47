"""The daemon's view of refused credentials: `STATUS=` and /readyz say so until a request succeeds.

The runner reports credentials through `Observer.credentials`; these tests call that hook as the runner
does, on a real Runner over a real SQLite file, with a datagram socket standing in for systemd.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from reconciler.daemon import Daemon
from reconciler.health import HealthServer
from reconciler.metrics import Metrics
from reconciler.notify import Notifier
from reconciler.runner import PassSummary
from reconciler.testing import FakeDriver
from tests.conftest import RunnerFactory
from tests.support.shop import Shop

REASON = "HTTP 401: the API key was revoked"


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    yield sock
    sock.close()


class Service:
    """A Daemon wired as `reconciler run` wires it: Metrics observe the runner, /readyz asks the daemon."""

    def __init__(self, make_runner: RunnerFactory, notify: str) -> None:
        self.runner = make_runner({"fake": FakeDriver("fake")})
        self.metrics = Metrics(providers=["fake"])
        self.runner.observer = self.metrics
        self.daemon = Daemon(
            self.runner,
            interval=timedelta(0),
            initial_delay=timedelta(0),
            shutdown_grace=timedelta(seconds=5),
            notifier=Notifier(notify),
            credentials_refused=lambda: self.metrics.refused,
            after_pass=self._stop,
        )

    async def _stop(self, _: PassSummary) -> None:
        self.daemon.stop.set()

    async def one_pass(self) -> None:
        self.daemon.stop.clear()
        await self.daemon.run()


@pytest.fixture
async def service(make_runner: RunnerFactory, systemd: socket.socket) -> AsyncIterator[Service]:
    made = Service(make_runner, systemd.getsockname())
    yield made
    made.daemon.notifier.close()


def statuses(sock: socket.socket) -> list[str]:
    found = []
    sock.setblocking(False)
    try:
        while True:
            fields = dict(line.partition("=")[::2] for line in sock.recv(4096).decode().splitlines())
            if "STATUS" in fields:
                found.append(fields["STATUS"])
    except BlockingIOError:
        return found
    finally:
        sock.setblocking(True)


async def test_status_names_refused_credentials_until_a_request_succeeds(
    service: Service, systemd: socket.socket
) -> None:
    await service.one_pass()
    assert statuses(systemd) == [_line(service)]
    assert "REFUSED" not in _line(service)

    service.metrics.credentials("fake", REASON)
    await service.one_pass()  # nothing due: the refusal is still the news
    (status,) = statuses(systemd)
    assert status == f"{_line(service)}; CREDENTIALS REFUSED(fake: {REASON})"

    service.metrics.credentials("fake", None)
    await service.one_pass()
    assert statuses(systemd) == [_line(service)]


async def test_readyz_is_503_naming_the_provider_while_its_credentials_are_refused(
    service: Service, shop: Shop
) -> None:
    async def alive() -> tuple[bool, str]:
        return service.daemon.alive()

    health = HealthServer("127.0.0.1", 0, service.metrics, alive=alive, ready=service.daemon.ready)
    base = f"http://127.0.0.1:{await health.start()}/"
    try:
        async with aiohttp.ClientSession() as session:

            async def readyz() -> tuple[int, str]:
                async with session.get(base + "readyz") as reply:
                    return reply.status, await reply.text()

            assert await readyz() == (200, "database reachable, 1 driver(s) loaded\n")
            service.metrics.credentials("fake", REASON)
            await service.one_pass()
            assert await readyz() == (503, f"credentials refused: fake: {REASON}\n")
            async with session.get(base + "healthz") as reply:  # refused credentials are not a dead loop
                assert reply.status == 200
            service.metrics.credentials("fake", None)
            assert await readyz() == (200, "database reachable, 1 driver(s) loaded\n")

            shop.execute("INSERT INTO schema_meta (version) VALUES (1)")
            service.metrics.credentials("fake", REASON)
            status, body = await readyz()
            assert status == 503
            assert body.startswith("database: schema_meta does not hold exactly one version row")
            assert body.endswith(f"; credentials refused: fake: {REASON}\n")
    finally:
        await health.stop()


def _line(service: Service) -> str:
    assert service.daemon.last_summary is not None
    return service.daemon.last_summary.line()
