"""Settlements and no-change checks of a pass wait for company (reconciler/record.py `WRITE_WINDOW`), and
stop waiting when no invoice is left to decide (docs/reconcile.md §5, §8)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from reconciler import record
from reconciler.driver_api import CommonSettings, Snapshot
from reconciler.store.sqlite import SqliteStore
from reconciler.testing import FakeDriver, snapshot
from tests.conftest import RunnerFactory
from tests.support.shop import Shop


class Staggered(FakeDriver):
    """Answers each invoice after its own delay, so answers come one by one, as from a provider with a few
    requests in flight."""

    delays: dict[str, float]

    async def fetch(self, provider_invoice_id: str) -> Snapshot:
        await asyncio.sleep(self.delays.get(provider_invoice_id, 0.0))
        return await super().fetch(provider_invoice_id)


def count_settle_calls(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every settle write of the store: a group, or 1 for a settlement written alone."""
    sizes: list[int] = []
    grouped, alone = store.record_settlements, store.record_settlement

    async def record_settlements(items: Any) -> Any:
        sizes.append(len(items))
        return await grouped(items)

    async def record_settlement(invoice: Any, draft: Any) -> Any:
        sizes.append(1)
        return await alone(invoice, draft)

    monkeypatch.setattr(store, "record_settlements", record_settlements)
    monkeypatch.setattr(store, "record_settlement", record_settlement)
    return sizes


async def test_settlements_ready_one_by_one_still_share_transactions(
    shop: Shop, store: SqliteStore, make_runner: RunnerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    product = shop.product()
    count = 40
    ids = [f"S-{i}" for i in range(count)]
    for pid in ids:
        shop.invoice(product, provider_invoice_id=pid, amount_sats=1000)
    driver = Staggered()
    driver.delays = {pid: 0.002 * i for i, pid in enumerate(ids)}  # one ready every 2 ms, 80 ms in all
    driver.script_many(ids, snapshot("SETTLED", amount_sats=1000, paid_sats=1000))
    sizes = count_settle_calls(store, monkeypatch)
    runner = make_runner({"fake": driver}, common=CommonSettings(driver="fake"))
    summary = await runner.run_pass()
    assert summary.counts["settle"] == count
    assert sum(sizes) == count
    # a window of 2 ms made about one group per settlement; waiting up to WRITE_WINDOW makes a few
    assert len(sizes) <= 6, sizes


async def test_the_last_invoice_of_a_pass_does_not_wait_out_the_window(
    shop: Shop, store: SqliteStore, make_runner: RunnerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(record.Settlements, "WINDOW", 600.0)
    monkeypatch.setattr(record.Bookkeeping, "WINDOW", 600.0)
    product = shop.product()
    shop.invoice(product, provider_invoice_id="paid", amount_sats=1000)
    shop.invoice(product, provider_invoice_id="waiting")
    shop.invoice(product, provider_invoice_id="slow")
    driver = Staggered()
    driver.delays = {"slow": 0.2}  # the others wait for it, then all go when it is decided
    driver.script("paid", snapshot("SETTLED", amount_sats=1000, paid_sats=1000))
    driver.script("waiting", snapshot("PENDING"))
    driver.script("slow", snapshot("PENDING"))
    runner = make_runner({"fake": driver}, common=CommonSettings(driver="fake"))
    summary = await asyncio.wait_for(runner.run_pass(), 30)
    assert (summary.counts["settle"], summary.counts["no_change"]) == (1, 2)
    # an action on one invoice outside a pass has no company at all
    shop.invoice(product, provider_invoice_id="later", amount_sats=1000)
    driver.script("later", snapshot("SETTLED", amount_sats=1000, paid_sats=1000))
    assert (await asyncio.wait_for(runner.run_pass(), 30)).counts["settle"] == 1
