"""Writes committed together (reconciler/coalesce.py) and the settle groups built on it (record.Settlements)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import pytest

from reconciler.coalesce import Coalescer, Failed
from reconciler.record import Settlements
from reconciler.store import base


class Log:
    """A write function that records each call's items and answers each item with its double."""

    def __init__(self, fail_on: int | None = None, fail_item: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail_on = fail_on
        self.fail_item = fail_item

    async def write(self, items: list[int]) -> list[int | Failed]:
        self.calls.append(list(items))
        await asyncio.sleep(0)
        if self.fail_on in items:
            raise RuntimeError(f"group with {self.fail_on} failed")
        return [Failed(ValueError(f"item {i}")) if i == self.fail_item else i * 2 for i in items]


async def test_items_arriving_together_share_one_call_and_each_gets_its_own_result() -> None:
    log = Log()
    group = Coalescer(log.write, size=100, window=0.01)
    results = await asyncio.gather(*(group.submit(i) for i in range(5)))
    assert results == [0, 2, 4, 6, 8]
    assert log.calls == [[0, 1, 2, 3, 4]]


async def test_a_full_group_goes_at_once_and_the_rest_waits_for_the_next() -> None:
    log = Log()
    group = Coalescer(log.write, size=2, window=60)  # the window would never end this test
    first = asyncio.gather(group.submit(1), group.submit(2))
    assert list(await asyncio.wait_for(first, 5)) == [2, 4]
    later = asyncio.ensure_future(group.submit(3))
    await asyncio.sleep(0.05)
    assert not later.done()  # alone, it waits for company or the window
    await group.submit(4)
    assert await later == 6
    assert log.calls == [[1, 2], [3, 4]]


class Held(Log):
    """A write function whose calls wait until the test lets them end."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def write(self, items: list[int]) -> list[int | Failed]:
        self.calls.append(list(items))
        await self.go.wait()
        return [i * 2 for i in items]


async def _one_by_one(group: Coalescer[int, int], items: range) -> list[asyncio.Future[int]]:
    """Submit `items` a window apart, so no two would share a call by the window alone."""
    futures: list[asyncio.Future[int]] = []
    for i in items:
        futures.append(asyncio.ensure_future(group.submit(i)))
        await asyncio.sleep(group.window * 5)
    return futures


@pytest.mark.parametrize(("in_flight", "calls"), [(None, [[1], [2], [3], [4]]), (1, [[1], [2, 3, 4]])])
async def test_with_a_call_in_flight_what_arrives_meanwhile_goes_together_next(
    in_flight: int | None, calls: list[list[int]]
) -> None:
    log = Held()
    group = Coalescer(log.write, size=100, window=0.002, in_flight=in_flight)
    futures = await _one_by_one(group, range(1, 5))
    log.go.set()
    assert await asyncio.wait_for(asyncio.gather(*futures), 5) == [2, 4, 6, 8]
    assert log.calls == calls


async def test_calls_waiting_for_one_in_flight_still_hold_at_most_size_items() -> None:
    log = Held()
    group = Coalescer(log.write, size=2, window=0.002, in_flight=2)
    futures = await _one_by_one(group, range(1, 8))
    assert log.calls == [[1], [2]]  # two in flight: the rest waits
    log.go.set()
    assert await asyncio.wait_for(asyncio.gather(*futures), 5) == [2 * i for i in range(1, 8)]
    assert log.calls[2:] == [[3, 4], [5, 6], [7]]


async def test_a_failed_call_is_every_items_failure_and_a_failed_item_only_its_own() -> None:
    log = Log(fail_on=7, fail_item=2)
    group = Coalescer(log.write, size=100, window=0.01)
    together = await asyncio.gather(group.submit(7), group.submit(8), return_exceptions=True)
    assert [str(e) for e in together] == ["group with 7 failed"] * 2
    alone = await asyncio.gather(group.submit(1), group.submit(2), return_exceptions=True)
    assert alone[0] == 2
    assert isinstance(alone[1], ValueError) and str(alone[1]) == "item 2"


class SettleStore:
    """The two settle entry points of a store: the group fails when it holds a poisoned settlement, as a
    database would roll the whole transaction back; alone, only the poisoned one fails."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.alone: list[str] = []

    async def record_settlements(self, items: Sequence[tuple[Any, Any]]) -> list[base.SettleOutcome]:
        self.groups.append([invoice for invoice, _ in items])
        if any(draft == "poison" for _, draft in items):
            raise RuntimeError("UNIQUE constraint failed: licenses.id")
        return [base.SettleOutcome(license_id=f"lic-{invoice}") for invoice, _ in items]

    async def record_settlement(self, invoice: Any, draft: Any) -> base.SettleOutcome:
        self.alone.append(invoice)
        if draft == "poison":
            raise RuntimeError("UNIQUE constraint failed: licenses.id")
        return base.SettleOutcome(license_id=f"lic-{invoice}")


async def test_settlements_share_a_transaction_and_a_failed_group_is_tried_one_by_one() -> None:
    store = SettleStore()
    settlements = Settlements(cast(base.Store, store))

    async def settle(invoice: str, draft: str) -> Any:
        return await settlements.settle(cast(Any, invoice), cast(Any, draft))

    fine = list(await asyncio.gather(settle("a", "ok"), settle("b", "ok")))
    assert fine == [base.SettleOutcome("lic-a"), base.SettleOutcome("lic-b")]
    assert (store.groups, store.alone) == ([["a", "b"]], [])

    mixed = await asyncio.gather(
        settle("c", "ok"), settle("d", "poison"), settle("e", "ok"), return_exceptions=True
    )
    assert mixed[0] == base.SettleOutcome("lic-c") and mixed[2] == base.SettleOutcome("lic-e")
    assert isinstance(mixed[1], RuntimeError)
    assert store.groups[-1] == ["c", "d", "e"] and store.alone == ["c", "d", "e"]


@pytest.mark.parametrize("count", [1, Settlements.SIZE + 1])
async def test_a_settle_group_never_exceeds_its_size(count: int) -> None:
    store = SettleStore()
    settlements = Settlements(cast(base.Store, store))
    await asyncio.gather(*(settlements.settle(cast(Any, str(n)), cast(Any, "ok")) for n in range(count)))
    sizes = [len(g) for g in store.groups] + ([1] * len(store.alone))
    assert sum(sizes) == count and max(sizes) <= Settlements.SIZE
    if count == 1:
        assert store.alone == ["0"] and store.groups == []  # one settlement alone needs no group


async def test_with_no_company_to_come_an_item_goes_at_once() -> None:
    log = Log()
    deciding = 0
    group = Coalescer(log.write, size=100, window=60, company=lambda: deciding)  # 60 s: never waited out
    assert await asyncio.wait_for(group.submit(1), 5) == 2
    deciding = 2
    waiting = asyncio.ensure_future(group.submit(2))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # others may still join it: it waits
    deciding = 0  # the last one is decided: its item goes at once, and the one waiting with it
    assert await asyncio.wait_for(group.submit(3), 5) == 6
    assert await waiting == 4
    assert log.calls == [[1], [2, 3]]


async def test_hurry_hands_what_waits_to_a_call_now() -> None:
    log = Log()
    group = Coalescer(log.write, size=100, window=60, company=lambda: 1)
    waiting = [asyncio.ensure_future(group.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiting)
    group.hurry()
    assert await asyncio.wait_for(asyncio.gather(*waiting), 5) == [2, 4]
    assert log.calls == [[1, 2]]
    group.hurry()  # nothing waits: no call
    assert log.calls == [[1, 2]]
