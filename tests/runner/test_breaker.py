"""Issue 12: the outage breaker in the runner: what an open circuit does to a pass, its summary, its
metrics and the daemon's `STATUS=`, on a real SQLite shop with the scripted driver.

The request log of a real provider is in tests/drivers/test_btcpay_breaker.py; these tests cover what a
scripted driver shows more directly (waits interrupted, late answers, a pass with nothing due).
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.daemon import Daemon
from reconciler.driver_api import CommonSettings, ProviderUnavailable, Snapshot
from reconciler.metrics import Metrics
from reconciler.notify import Notifier
from reconciler.passes import Observer
from reconciler.runner import PassSummary, Runner
from reconciler.testing import FakeDriver, snapshot
from reconciler.timeutil import format_ts
from tests.conftest import Clock, RunnerFactory
from tests.support.shop import T0, Shop

DOWN = ProviderUnavailable("fake: HTTP 503 from the provider", http_status=503)
PENDING = snapshot("PENDING", raw="New", amount_sats=10_000)
COOLDOWN = timedelta(minutes=2)


def common(**overrides: object) -> CommonSettings:
    values: dict[str, object] = {
        "driver": "fake",
        "retry_attempts": 1,
        "retry_max_delay": 0.0,
        "max_concurrency": 1,
        "breaker_threshold": 2,
        "breaker_cooldown": COOLDOWN.total_seconds(),
    }
    return CommonSettings.model_validate(values | overrides)


def seed(shop: Shop, count: int, provider: str = "fake") -> list[str]:
    product = shop.product(f"app-{provider}")
    shop.policy(product)
    return [
        shop.invoice(product, provider=provider, provider_invoice_id=f"{provider}-{n}") for n in range(count)
    ]


def breaker_gauge(metrics: Metrics) -> dict[str, float]:
    for family in text_string_to_metric_families(metrics.render().decode()):
        if family.name == "reconciler_provider_breaker_state":
            return {s.labels["provider"]: s.value for s in family.samples}
    raise AssertionError("no reconciler_provider_breaker_state")


async def test_requests_waiting_for_a_retry_give_up_when_the_circuit_opens(
    shop: Shop, make_runner: RunnerFactory
) -> None:
    ids = seed(shop, 6)
    driver = FakeDriver()
    driver.script_many([f"fake-{n}" for n in range(6)], DOWN)
    first_wait = asyncio.Event()
    never = asyncio.Event()

    async def sleep(_: float) -> None:
        if not first_wait.is_set():  # the first wait for a retry would last until the test times out
            first_wait.set()
            await never.wait()
        # later waits end at once: the other invoice's second try fails, and its call gives up

    runner = make_runner(
        {"fake": driver},
        common=common(max_concurrency=2, retry_attempts=2, retry_max_delay=1.0, breaker_threshold=1),
        sleep=sleep,
    )

    summary = await asyncio.wait_for(runner.run_pass(), 10)

    # the waiting invoice's first try and the other one's two, whose giving up opened the circuit
    assert sorted(Counter(driver.calls).values()) == [1, 2]
    assert summary.counts == {"provider_error": len(ids)}
    assert int(shop.scalar("SELECT count(*) FROM invoices WHERE lease_token IS NOT NULL")) == 0
    assert int(shop.scalar("SELECT max(check_attempts) FROM invoices")) == 0


async def test_an_open_circuit_degrades_every_pass_until_it_closes_even_one_with_nothing_due(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    seed(shop, 3)
    driver = FakeDriver()
    driver.script_many([f"fake-{n}" for n in range(3)], DOWN)
    metrics = Metrics(providers=["fake"])
    runner = make_runner({"fake": driver}, common=common())
    runner.observer = metrics
    assert breaker_gauge(metrics) == {"fake": 0.0}
    opened_at = clock.now

    first = await runner.run_pass()
    driver.script_many([f"fake-{n}" for n in range(3)], PENDING)  # the provider is back

    assert first.degraded == {"fake": f"circuit open until {format_ts(opened_at + COOLDOWN)}"}
    assert breaker_gauge(metrics) == {"fake": 2.0}

    clock.advance(COOLDOWN / 4)  # nothing is due: the two asked are rescheduled, the third held back
    idle = await runner.run_pass()

    assert idle.claimed == 0
    assert idle.degraded == first.degraded
    assert idle.to_dict()["circuits"]["fake"]["state"] == "open"

    shop.execute("UPDATE invoices SET next_check_at = NULL")
    clock.advance(COOLDOWN)
    calls = len(driver.calls)
    closed = await runner.run_pass()

    assert len(driver.calls) == calls + 3
    assert not closed.is_degraded and closed.counts == {"no_change": 3}
    assert breaker_gauge(metrics) == {"fake": 0.0}


class LateAnswer(FakeDriver, Observer):
    """Holds the answer about `late` until the runner reports the circuit open: a request in flight when
    it opened. (It observes the runner too, to hear of it.)"""

    def __init__(self, late: str) -> None:
        super().__init__()
        self.late = late
        self.opened = asyncio.Event()

    def breaker(self, provider_id: str, state: str) -> None:
        if state == "open":
            self.opened.set()

    async def fetch(self, provider_invoice_id: str) -> Snapshot:
        if provider_invoice_id == self.late:
            await self.opened.wait()
        return await super().fetch(provider_invoice_id)


async def test_an_answer_that_was_in_flight_when_the_circuit_opened_does_not_close_it(
    shop: Shop, make_runner: RunnerFactory
) -> None:
    product = shop.product()
    shop.policy(product)
    # claimed first (the oldest), so its request is in flight before the others fail
    shop.invoice(product, provider_invoice_id="late", created_at=T0 - timedelta(minutes=1))
    for n in range(3):
        shop.invoice(product, provider_invoice_id=f"fake-{n}")
    driver = LateAnswer("late")
    driver.script_many([f"fake-{n}" for n in range(3)], DOWN)
    driver.script("late", PENDING)
    runner = make_runner({"fake": driver}, common=common(max_concurrency=4))
    runner.observer = driver

    summary = await asyncio.wait_for(runner.run_pass(), 10)

    assert summary.counts == {"no_change": 1, "provider_error": 3}
    assert len(driver.calls) == 3  # the late one and the two that opened the circuit
    assert runner.breakers["fake"].state == "open"
    assert "circuit open" in summary.degraded["fake"]


async def test_another_provider_is_not_held_back(shop: Shop, make_runner: RunnerFactory) -> None:
    seed(shop, 4, "down")
    healthy = seed(shop, 4, "up")
    down, up = FakeDriver("down"), FakeDriver("up")
    down.script_many([f"down-{n}" for n in range(4)], DOWN)
    up.script_many([f"up-{n}" for n in range(4)], PENDING)
    runner = make_runner({"down": down, "up": up}, common=common())

    summary = await runner.run_pass()

    assert len(down.calls) == 2 and len(up.calls) == 4
    assert summary.by_provider["up"] == {"no_change": 4}
    assert set(summary.degraded) == {"down"}
    assert summary.to_dict()["circuits"]["up"] == {"state": "closed"}
    rows = shop.rows("SELECT check_attempts FROM invoices WHERE id IN (?, ?, ?, ?)", healthy)
    assert [row["check_attempts"] for row in rows] == [1, 1, 1, 1]


async def test_a_dry_run_asks_nothing_while_the_circuit_is_open(
    shop: Shop, make_runner: RunnerFactory
) -> None:
    seed(shop, 3)
    driver = FakeDriver()
    driver.script_many([f"fake-{n}" for n in range(3)], DOWN)
    runner = make_runner({"fake": driver}, common=common())
    await runner.run_pass()
    shop.execute("UPDATE invoices SET next_check_at = NULL")
    calls = len(driver.calls)
    lines: list[dict[str, object]] = []

    await runner.dry_run(lines.append)

    assert len(driver.calls) == calls
    assert [line["decision"] for line in lines] == ["provider_error"] * 3
    assert all("circuit open until" in str(line["evidence"]) for line in lines)


# -- the daemon's STATUS= ----------------------------------------------------------------------------------
@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    yield sock
    sock.close()


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


def one_pass_daemon(runner: Runner, notify: str) -> Daemon:
    daemon: Daemon

    async def stop(_: PassSummary) -> None:
        daemon.stop.set()

    daemon = Daemon(
        runner,
        interval=timedelta(0),
        initial_delay=timedelta(0),
        shutdown_grace=timedelta(seconds=5),
        notifier=Notifier(notify),
        after_pass=stop,
    )
    return daemon


async def test_status_says_which_circuit_is_open_until_when_and_when_it_closed(
    shop: Shop, make_runner: RunnerFactory, clock: Clock, systemd: socket.socket
) -> None:
    seed(shop, 2)
    driver = FakeDriver()
    driver.script_many(["fake-0", "fake-1"], DOWN, PENDING)
    runner = make_runner({"fake": driver}, common=common())
    daemon = one_pass_daemon(runner, systemd.getsockname())
    until = format_ts(clock.now + COOLDOWN)
    try:
        await daemon.run()
        assert daemon.last_summary is not None
        (status,) = statuses(systemd)
        assert (
            status == f"{daemon.last_summary.line()}; PROVIDER UNAVAILABLE(fake: circuit open until {until})"
        )

        shop.execute("UPDATE invoices SET next_check_at = NULL")
        clock.advance(COOLDOWN)
        daemon.stop.clear()
        await daemon.run()
        (status,) = statuses(systemd)
        assert status == daemon.last_summary.line()
        assert "UNAVAILABLE" not in status and "DEGRADED" not in status
    finally:
        daemon.notifier.close()
