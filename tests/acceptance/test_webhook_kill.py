"""The daemon SIGKILLed right after answering a webhook 200 (issue 14): the nudge was durable before the answer,
so the next start licenses the invoice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.acceptance.webhook_daemon import Daemon, seed, until, write_config
from tests.fakes.btcpay import FakeBTCPay, Payment, make_invoice
from tests.store.backends import Backend, sqlite_backend


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Backend]:
    async for found in sqlite_backend(tmp_path):
        yield found


@pytest.mark.slow
async def test_a_daemon_killed_after_answering_200_licenses_the_invoice_at_the_next_start(
    tmp_path: Path, db: Backend
) -> None:
    (iid,) = (await seed(db, ["INV-KILL"])).values()  # not due for an hour: only the webhook makes it due
    async with FakeBTCPay() as fake, aiohttp.ClientSession() as session:
        fake.add(make_invoice("INV-KILL", status="Settled", payments=[Payment("0.001")]))
        fake.fault("INV-KILL", latency=30)  # the worker's fetch hangs until the kill
        config = write_config(
            tmp_path,
            f"sqlite://{tmp_path / 'conformance.db'}",
            fake.base_url,
            webhooks={"listen": "127.0.0.1:0"},
            lease="3s",
        )
        victim = await Daemon.start(config)
        await victim.wait_for("pass finished")  # its first pass is over (the invoice was not due)

        status, _ = await victim.deliver(session, "INV-KILL", "d-kill")
        assert status == 200

        async def fetching() -> bool:
            return fake.in_flight > 0

        await until(fetching, "the worker asking BTCPay")
        victim.kill()
        assert await victim.stop() == -9
        row = (await db.raw.rows("SELECT status, lease_token, next_check_at FROM invoices"))[0]
        assert row["status"] == "pending" and row["lease_token"] is not None  # killed mid-decision
        assert await db.scalar("SELECT outcome FROM webhook_deliveries") == "nudged"

        fake.faults.clear()
        await asyncio.sleep(3.2)  # the dead process's lease ends
        survivor = await Daemon.start(config)  # its first pass finds the invoice due since the webhook

        async def licensed() -> bool:
            return bool(await db.scalar("SELECT count(*) FROM licenses WHERE invoice_id = :id", {"id": iid}))

        await until(licensed, "the license after the restart")
        assert await survivor.stop() == 0
    assert await db.scalar("SELECT status FROM invoices") == "settled"
    assert await db.scalar("SELECT count(*) FROM audit_log WHERE action = 'invoice.settled'") == 1
    assert await db.scalar("SELECT lease_token FROM invoices") is None
