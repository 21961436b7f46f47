"""Issue 12: the outage breaker, seen from the provider's side.

A real Runner over a real SQLite shop drives the real BTCPay driver against the fake Greenfield server;
the fake's request log shows exactly which requests reached it: K fetches unanswered, then nothing while
the circuit is open, then one probe alone, then (the probe answered) everything else.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from reconciler_btcpay import BTCPayDriver

from reconciler.driver_api import CommonSettings, Driver
from reconciler.passes import Observer
from reconciler.runner import Provider, Runner, RunnerSettings
from reconciler.store.sqlite import SqliteStore
from reconciler.timeutil import format_ts
from tests.conftest import Clock
from tests.drivers.conftest import MakeBTCPayDriver
from tests.fakes import btcpay
from tests.fakes.btcpay import make_invoice
from tests.fakes.raw import RawAnswer
from tests.support.shop import Shop

PROVIDER = "btcpay_main"
COOLDOWN = timedelta(seconds=60)
THRESHOLD = 3
INVOICES = [f"inv{n}" for n in range(6)]


class Transitions(Observer):
    """Every breaker state the runner reports, in order."""

    def __init__(self) -> None:
        self.states: list[str] = []

    def breaker(self, provider_id: str, state: str) -> None:
        self.states.append(f"{provider_id}:{state}")


async def _no_sleep(_: float) -> None:
    return None


class World:
    """The shop, the fake and a runner whose breaker outlives its passes (as the daemon's does)."""

    def __init__(
        self,
        shop: Shop,
        store: SqliteStore,
        clock: Clock,
        signing_key: Ed25519PrivateKey,
        fake: btcpay.FakeBTCPay,
        driver: BTCPayDriver,
    ) -> None:
        self.shop, self.store, self.clock, self.fake = shop, store, clock, fake
        product = shop.product()
        shop.policy(product)
        self.ids = {
            pid: shop.invoice(product, provider=PROVIDER, provider_invoice_id=pid, invoice_id=pid)
            for pid in INVOICES
        }
        fake.add(*(make_invoice(pid, "New") for pid in INVOICES))
        self.observer = Transitions()
        # mypy does not match BTCPayDriver's nested Settings class to the Protocol's class variable
        self.driver = cast(Driver, driver)
        self.signing_key = signing_key
        self.runner = self.make_runner()

    def make_runner(self, **common: Any) -> Runner:
        settings = {
            "driver": "btcpay",
            "timeout": 5.0,
            "retry_attempts": 1,
            "retry_max_delay": 0.0,
            "max_concurrency": 1,
            "breaker_threshold": THRESHOLD,
            "breaker_cooldown": COOLDOWN.total_seconds(),
        } | common
        runner = Runner(
            self.store,
            {PROVIDER: Provider(PROVIDER, self.driver, CommonSettings(**settings))},
            RunnerSettings(),
            signing_key=self.signing_key,
            clock=self.clock,
            owner="test:1:abc",
            rng=random.Random(7),
            sleep=_no_sleep,
            observer=self.observer,
        )
        self.runner = runner
        return runner

    def set_concurrency(self, limit: int) -> None:
        provider = self.runner.providers[PROVIDER]
        common = provider.common.model_copy(update={"max_concurrency": limit})
        self.runner.providers[PROVIDER] = Provider(PROVIDER, provider.driver, common)

    def requests(self) -> list[btcpay.Exchange]:
        return [e for e in self.fake.log if e.target in self.ids]

    def due_again(self) -> None:
        """Every invoice due now (as a backlog would be), whatever its schedule said."""
        self.shop.execute("UPDATE invoices SET next_check_at = NULL")

    def rows(self) -> dict[str, Any]:
        return {row["id"]: row for row in self.shop.rows("SELECT * FROM invoices")}


@pytest.fixture
def world(
    shop: Shop,
    store: SqliteStore,
    clock: Clock,
    signing_key: Ed25519PrivateKey,
    btcpay_fake: btcpay.FakeBTCPay,
    btcpay_make_driver: MakeBTCPayDriver,
) -> World:
    return World(shop, store, clock, signing_key, btcpay_fake, btcpay_make_driver(provider_id=PROVIDER))


def assert_untouched(row: Any) -> None:
    """Released as the shop wrote it: no status, no check recorded, no attempt counted, no lease."""
    assert row["status"] == "pending"
    assert row["check_attempts"] == 0
    assert row["last_checked_at"] is None and row["last_provider_status"] is None
    assert row["lease_token"] is None and row["lease_owner"] is None and row["lease_until"] is None


async def test_k_unavailable_answers_open_the_circuit_and_nothing_is_asked_while_it_is_open(
    world: World,
) -> None:
    world.fake.fault(statuses=[503] * THRESHOLD)
    opened_at = world.clock.now

    summary = await world.runner.run_pass()

    assert [e.status for e in world.requests()] == [503] * THRESHOLD
    asked = {e.target for e in world.requests()}
    assert summary.counts == {"provider_error": len(INVOICES)}
    assert "circuit open until" in summary.degraded[PROVIDER]
    assert summary.to_dict()["circuits"][PROVIDER] == {
        "state": "open",
        "opened_at": format_ts(opened_at),
        "until": format_ts(opened_at + COOLDOWN),
    }
    rows = world.rows()
    for pid in INVOICES:
        assert_untouched(rows[pid])
    for pid in set(INVOICES) - asked:  # released until the cool-down ends, off the schedule
        assert rows[pid]["next_check_at"] == format_ts(opened_at + COOLDOWN)
    assert world.observer.states == [f"{PROVIDER}:open"]

    # Half-way through the cool-down, with every invoice due again: not one request.
    world.due_again()
    world.clock.advance(COOLDOWN / 2)
    again = await world.runner.run_pass()

    assert [e.status for e in world.requests()] == [503] * THRESHOLD
    assert again.counts == {"provider_error": len(INVOICES)}
    assert "circuit open until" in again.degraded[PROVIDER]
    rows = world.rows()
    for pid in INVOICES:
        assert_untouched(rows[pid])
        assert rows[pid]["next_check_at"] == format_ts(opened_at + COOLDOWN)


async def test_after_the_cool_down_one_probe_goes_alone_and_its_answer_closes_the_circuit(
    world: World,
) -> None:
    world.fake.fault(statuses=[503] * THRESHOLD)
    await world.runner.run_pass()
    world.set_concurrency(8)  # the same runner, so the same breaker: only the next pass may overlap
    world.fake.fault(latency=0.2)  # healthy again, but slow: overlapping requests would show
    world.due_again()
    world.clock.advance(COOLDOWN + timedelta(seconds=1))
    before = len(world.requests())

    summary = await world.runner.run_pass()

    after = world.requests()[before:]
    assert [e.status for e in after] == [200] * len(INVOICES)
    probe, rest = after[0], after[1:]
    assert all(e.at >= probe.at + 0.2 for e in rest), "a request was sent while the probe was in flight"
    assert summary.counts == {"no_change": len(INVOICES)}
    assert not summary.is_degraded
    assert summary.to_dict()["circuits"][PROVIDER] == {"state": "closed"}
    assert world.observer.states == [f"{PROVIDER}:open", f"{PROVIDER}:half_open", f"{PROVIDER}:closed"]
    assert all(row["check_attempts"] == 1 for row in world.rows().values())


async def test_a_failed_probe_opens_the_circuit_for_another_cool_down(world: World) -> None:
    world.fake.fault(statuses=[503] * THRESHOLD)
    await world.runner.run_pass()
    world.fake.fault(statuses=[503])  # the probe fails; anything after it would be answered
    world.due_again()
    world.clock.advance(COOLDOWN + timedelta(seconds=1))
    reopened_at = world.clock.now
    before = len(world.requests())

    summary = await world.runner.run_pass()

    assert [e.status for e in world.requests()[before:]] == [503]
    assert summary.counts == {"provider_error": len(INVOICES)}
    assert summary.to_dict()["circuits"][PROVIDER]["until"] == format_ts(reopened_at + COOLDOWN)
    rows = world.rows()
    for pid in INVOICES:
        assert_untouched(rows[pid])
    probed = world.requests()[before].target
    for pid in set(INVOICES) - {probed}:
        assert rows[pid]["next_check_at"] == format_ts(reopened_at + COOLDOWN)
    assert world.observer.states == [f"{PROVIDER}:open", f"{PROVIDER}:half_open", f"{PROVIDER}:open"]

    # The next cool-down passes: a probe again, answered this time, and then everything else.
    world.due_again()
    world.clock.advance(COOLDOWN + timedelta(seconds=1))
    before = len(world.requests())

    closed = await world.runner.run_pass()

    assert [e.status for e in world.requests()[before:]] == [200] * len(INVOICES)
    assert closed.counts == {"no_change": len(INVOICES)}
    assert world.observer.states[-2:] == [f"{PROVIDER}:half_open", f"{PROVIDER}:closed"]


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"drop": True}, id="connection-dropped"),
        pytest.param({"statuses": [502] * 10}, id="502"),
        pytest.param({"statuses": [500] * 10}, id="500"),
        pytest.param({"statuses": [408] * 10}, id="408"),
    ],
)
async def test_every_kind_of_unavailable_answer_counts(world: World, fault: dict[str, Any]) -> None:
    world.fake.fault(**fault)

    await world.runner.run_pass()

    # aiohttp sends a GET again, once, when the server drops the connection: count invoices asked
    asked = list(dict.fromkeys(e.target for e in world.requests()))
    assert len(asked) == THRESHOLD
    assert world.observer.states == [f"{PROVIDER}:open"]


async def test_a_request_that_times_out_counts(world: World, btcpay_make_driver: MakeBTCPayDriver) -> None:
    world.driver = cast(Driver, btcpay_make_driver(provider_id=PROVIDER, timeout=0.1))
    world.make_runner(timeout=0.1)
    # an answer that promises a body it never sends: the driver's timeout ends each request
    world.fake.fault(answers=[RawAnswer(200, b"{}", content_length=1000) for _ in INVOICES])

    await world.runner.run_pass()

    assert len(world.requests()) == THRESHOLD
    assert world.observer.states == [f"{PROVIDER}:open"]


async def test_a_fetch_counts_once_after_its_retries_and_one_that_recovers_counts_as_an_answer(
    world: World,
) -> None:
    world.make_runner(retry_attempts=3)
    # a retry that is answered is an answer; then three fetches that get none after their three tries
    world.fake.fault(statuses=[503, 503, 200] + [503] * 3 * THRESHOLD)

    await world.runner.run_pass()

    asked = [e.target for e in world.requests()]
    first, *others = list(dict.fromkeys(asked))
    assert asked == [first] * 3 + [pid for pid in others[:THRESHOLD] for _ in range(3)]
    assert [e.status for e in world.requests()][:3] == [503, 503, 200]
    assert world.observer.states == [f"{PROVIDER}:open"]


@pytest.mark.parametrize(
    "statuses",
    [
        pytest.param([429] * 10, id="429-is-an-answer"),
        pytest.param([503, 503, 200, 503, 503, 200], id="an-answer-resets-the-count"),
    ],
)
async def test_what_does_not_open_the_circuit(world: World, statuses: list[int]) -> None:
    world.fake.fault(statuses=list(statuses))

    await world.runner.run_pass()

    assert [e.status for e in world.requests()] == statuses[: len(INVOICES)]
    assert world.observer.states == []


async def test_not_found_and_refused_credentials_do_not_open_it(world: World) -> None:
    world.fake.invoices.clear()  # every fetch is a 404

    summary = await world.runner.run_pass()

    assert [e.status for e in world.requests()] == [404] * len(INVOICES)
    assert summary.counts == {"not_found": len(INVOICES)}

    world.fake.api_keys.clear()  # every fetch is a 401: the credentials circuit, not the outage breaker
    world.due_again()
    refused = await world.runner.run_pass()

    assert refused.degraded[PROVIDER] == "authentication failed"
    assert world.observer.states == []
