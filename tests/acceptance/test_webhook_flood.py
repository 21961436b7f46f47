"""A flood of 1,000 signed webhooks in 10 s while the database is slow (issue 14): the bounded intake answers
503 with Retry-After when full, the client retries as BTCPay does, every invoice ends in its provider's state,
and the daemon's memory stays bounded."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.acceptance.webhook_daemon import Daemon, seed, until, write_config
from tests.fakes.btcpay import FakeBTCPay, Payment, make_invoice
from tests.store.backends import Backend, sqlite_backend

COUNT = 1000
#: the provider's status -> what the invoice row ends as
FINAL = {"Settled": "settled", "Expired": "expired", "Invalid": "invalid", "New": "pending"}
STATES = ["Settled", "Settled", "Expired", "Settled", "Invalid", "New"]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Backend]:
    async for found in sqlite_backend(tmp_path):
        yield found


@contextlib.contextmanager
def slow_database(path: Path) -> Iterator[None]:
    """Another writer that holds SQLite's write lock half of the time, 20 ms at a time: every write of the
    daemon waits for it (busy_timeout), as on a loaded disk."""
    stop = threading.Event()

    def hog() -> None:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            while not stop.is_set():
                conn.execute("BEGIN IMMEDIATE")
                time.sleep(0.02)
                conn.execute("COMMIT")
                time.sleep(0.02)
        finally:
            conn.close()

    thread = threading.Thread(target=hog, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(10)


@pytest.mark.slow
async def test_a_flood_of_webhooks_on_a_slow_database_loses_nothing(tmp_path: Path, db: Backend) -> None:
    refs = [f"INV-{i}" for i in range(COUNT)]
    states = {ref: STATES[i % len(STATES)] for i, ref in enumerate(refs)}
    ids = await seed(db, refs)
    async with FakeBTCPay() as fake, aiohttp.ClientSession() as session:
        for ref, state in states.items():
            payments = [Payment("0.001")] if state == "Settled" else []
            fake.add(make_invoice(ref, status=state, payments=payments))
        fake.fault(None, latency=0.02)  # a 20 ms provider
        config = write_config(
            tmp_path,
            f"sqlite://{tmp_path / 'conformance.db'}",
            fake.base_url,
            webhooks={"listen": "127.0.0.1:0", "intake": 20, "workers": 2, "retry_after": "1s"},
            interval="2s",  # the safety net takes what the full intake could not queue
        )
        daemon = await Daemon.start(config)
        await daemon.wait_for("pass finished")
        before = daemon.rss_kib()
        refused: list[str | None] = []

        async def deliver(n: int, ref: str) -> None:
            await asyncio.sleep(n * 10 / COUNT)  # 1,000 in 10 s
            first = f"d-{n}"
            for attempt in range(30):  # as BTCPay: the same delivery again, with a new id, after Retry-After
                delivery = first if attempt == 0 else f"{first}-r{attempt}"
                status, retry_after = await daemon.deliver(session, ref, delivery, original=first)
                if status == 200:
                    return
                assert status == 503, status
                refused.append(retry_after)
                await asyncio.sleep(float(retry_after or 1))
            raise AssertionError(f"{ref} never accepted")

        with slow_database(tmp_path / "conformance.db"):
            await asyncio.gather(*(deliver(n, ref) for n, ref in enumerate(refs)))

        async def all_final() -> bool:
            rows = await db.raw.rows("SELECT provider_invoice_id, status FROM invoices")
            return all(row["status"] == FINAL[states[row["provider_invoice_id"]]] for row in rows)

        await until(all_final, "every invoice in its provider's state", within=60)
        grown = daemon.rss_kib("VmHWM") - before
        assert await daemon.stop() == 0

    assert refused and set(refused) == {"1"}  # the intake was full at times: 503 + Retry-After
    assert await db.scalar("SELECT count(*) FROM webhook_deliveries") == COUNT  # each recorded once
    paid = {ids[ref] for ref, state in states.items() if state == "Settled"}
    licensed = await db.raw.rows("SELECT invoice_id, count(*) AS n FROM licenses GROUP BY invoice_id")
    assert {row["invoice_id"]: row["n"] for row in licensed} == {iid: 1 for iid in paid}
    assert grown < 64 * 1024, f"the daemon grew {grown} KiB during the flood"
