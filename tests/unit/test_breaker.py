"""Issue 12: the outage breaker's states on a fixed clock (breaker.Breaker), and the edges a whole pass
shows only by chance: a probe that says nothing, requests waiting for the probe, a cool-down that ends
while nothing is due."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.breaker import Breaker, CircuitOpen, CircuitState
from reconciler.driver_api import CommonSettings, ProviderUnavailable
from reconciler.metrics import Metrics
from reconciler.testing import FakeDriver, snapshot
from tests.conftest import Clock, RunnerFactory
from tests.support.shop import T0, Shop

COOLDOWN = timedelta(seconds=30)


@pytest.fixture
def breaker(clock: Clock) -> Breaker:
    return Breaker("p", threshold=3, cooldown=COOLDOWN, clock=clock)


def state(breaker: Breaker) -> CircuitState:
    """The state now (a call, so that mypy does not carry one assert's narrowing over to the next)."""
    return breaker.state


async def fail(breaker: Breaker, times: int) -> None:
    for _ in range(times):
        breaker.record(await breaker.admit(), "unavailable", "p: HTTP 503")


async def test_only_unavailable_answers_in_a_row_open_it(breaker: Breaker, clock: Clock) -> None:
    await fail(breaker, 2)
    breaker.record(await breaker.admit(), "answered")
    await fail(breaker, 2)
    breaker.record(await breaker.admit(), "neutral")  # a driver bug says nothing either way
    assert state(breaker) is CircuitState.CLOSED

    await fail(breaker, 1)

    assert state(breaker) is CircuitState.OPEN
    assert (breaker.opened_at, breaker.open_until) == (clock.now, clock.now + COOLDOWN)
    with pytest.raises(CircuitOpen):
        await breaker.admit()


async def test_answers_to_requests_sent_before_it_opened_change_nothing(breaker: Breaker) -> None:
    early = [await breaker.admit() for _ in range(4)]
    for ticket in early[:3]:
        breaker.record(ticket, "unavailable")

    breaker.record(early[3], "answered")

    assert state(breaker) is CircuitState.OPEN


async def test_the_cool_down_ends_in_one_probe_that_closes_or_reopens_it(
    breaker: Breaker, clock: Clock
) -> None:
    await fail(breaker, 3)
    clock.advance(COOLDOWN)
    assert state(breaker) is CircuitState.HALF_OPEN

    probe = await breaker.admit()
    assert probe.probe and state(breaker) is CircuitState.HALF_OPEN
    breaker.record(probe, "unavailable")

    assert state(breaker) is CircuitState.OPEN and breaker.open_until == clock.now + COOLDOWN

    clock.advance(COOLDOWN)
    breaker.record(await breaker.admit(), "answered")

    assert state(breaker) is CircuitState.CLOSED and breaker.describe() == {"state": "closed"}
    assert not (await breaker.admit()).probe


async def test_a_probe_that_says_nothing_leaves_it_half_open_for_the_next_request(
    breaker: Breaker, clock: Clock
) -> None:
    await fail(breaker, 3)
    clock.advance(COOLDOWN)

    breaker.record(await breaker.admit(), "neutral")  # a driver bug, or the pass was cancelled

    assert state(breaker) is CircuitState.HALF_OPEN
    await asyncio.wait_for(breaker.settled(), 1)  # no probe in flight any more: nothing to wait for
    assert (await breaker.admit()).probe


async def test_requests_wait_for_the_probe_and_follow_its_outcome(breaker: Breaker, clock: Clock) -> None:
    await fail(breaker, 3)
    clock.advance(COOLDOWN)
    probe = await breaker.admit()
    waiting = [asyncio.create_task(breaker.admit()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(task.done() for task in waiting)

    breaker.record(probe, "answered")

    tickets = await asyncio.gather(*waiting)
    assert not any(ticket.probe for ticket in tickets)

    await fail(breaker, 3)
    clock.advance(COOLDOWN)
    probe = await breaker.admit()
    waiting = [asyncio.create_task(breaker.admit()) for _ in range(3)]
    await asyncio.sleep(0)
    breaker.record(probe, "unavailable")

    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(result, CircuitOpen) for result in results)


async def test_a_cool_down_that_ends_while_nothing_is_due_shows_half_open(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    product = shop.product()
    shop.policy(product)
    shop.invoice(product, provider_invoice_id="A", created_at=T0)
    driver = FakeDriver()
    driver.script("A", ProviderUnavailable("fake: HTTP 502", http_status=502), snapshot("PENDING"))
    runner = make_runner(
        {"fake": driver},
        common=CommonSettings(driver="fake", retry_attempts=1, breaker_threshold=1, breaker_cooldown=30),
    )
    metrics = Metrics(providers=["fake"])
    runner.observer = metrics
    await runner.run_pass()
    clock.advance(COOLDOWN)  # A is due again only after its schedule's minute

    idle = await runner.run_pass()

    assert idle.claimed == 0
    assert idle.degraded == {"fake": "circuit half-open (its next request is a probe)"}
    assert idle.to_dict()["circuits"]["fake"]["state"] == "half_open"
    (family,) = [
        f
        for f in text_string_to_metric_families(metrics.render().decode())
        if f.name == "reconciler_provider_breaker_state"
    ]
    assert [s.value for s in family.samples] == [1.0]
