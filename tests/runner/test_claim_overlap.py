"""The next batch is claimed as soon as fewer than a batch of the claimed invoices are still being decided,
even while the decided ones wait for their write group, and at most `runner.IN_FLIGHT_BATCHES` batches are
held at once (docs/reconcile.md §1)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from reconciler import runner as runner_module
from reconciler.driver_api import CommonSettings
from reconciler.store.sqlite import SqliteStore
from reconciler.testing import FakeDriver, snapshot
from tests.conftest import RunnerFactory
from tests.support.shop import Shop

BATCH = 4


async def until(condition: Any, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_claims_overlap_writes_that_have_not_ended(
    shop: Shop, store: SqliteStore, make_runner: RunnerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    product = shop.product()
    pids = [f"O-{i}" for i in range(5 * BATCH)]
    ids = [shop.invoice(product, provider_invoice_id=pid, amount_sats=1000) for pid in pids]
    driver = FakeDriver()
    driver.script_many(pids, snapshot("SETTLED", amount_sats=1000, paid_sats=1000))
    # every settle write waits until the test lets it go: no invoice of the pass is written meanwhile
    writes_may_end = asyncio.Event()
    claims: list[int] = []
    grouped, alone, claim = store.record_settlements, store.record_settlement, store.claim

    async def record_settlements(items: Any) -> Any:
        await writes_may_end.wait()
        return await grouped(items)

    async def record_settlement(invoice: Any, draft: Any) -> Any:
        await writes_may_end.wait()
        return await alone(invoice, draft)

    async def counted_claim(**kwargs: Any) -> Any:
        batch = await claim(**kwargs)
        claims.append(len(batch))
        return batch

    monkeypatch.setattr(store, "record_settlements", record_settlements)
    monkeypatch.setattr(store, "record_settlement", record_settlement)
    monkeypatch.setattr(store, "claim", counted_claim)
    runner = make_runner({"fake": driver}, batch_size=BATCH, common=CommonSettings(driver="fake"))
    running = asyncio.create_task(runner.run_pass())
    held = runner_module.IN_FLIGHT_BATCHES
    await until(lambda: len(claims) >= held, f"{held} claims while no write has ended")
    await asyncio.sleep(0.2)  # time for a claim too many, were the bound not kept
    assert claims == [BATCH] * held, claims
    writes_may_end.set()
    summary = await asyncio.wait_for(running, 30)
    assert summary.counts["settle"] == len(pids)
    assert all(shop.status(invoice_id) == "settled" for invoice_id in ids)
    assert all(len(shop.licenses(invoice_id)) == 1 for invoice_id in ids)
