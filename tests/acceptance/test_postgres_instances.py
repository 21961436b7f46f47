"""Several instances on one PostgreSQL database split the work with no coordination beyond it
(docs/reconcile.md §16)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PG_URL, pg_connection
from tests.support.pg_cluster import planned, reconciler, search_path_url, seed, wait_all, write_config

WEBHOOK = textwrap.dedent(
    """
    import asyncio, json, random, sys, uuid
    from datetime import UTC, datetime
    import asyncpg

    def ts():
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    async def main(url, ids):
        conn = await asyncpg.connect(url)
        done = []
        random.seed(11)
        for invoice_id, product_id in ids:
            async with conn.transaction():
                flipped = await conn.execute(
                    "UPDATE invoices SET status = 'settled', settled_at = $1 WHERE id = $2 AND status = 'pending'",
                    ts(), invoice_id)
                if flipped == "UPDATE 1" and random.random() < 0.7:  # sometimes only the status (recovery path)
                    await conn.execute(
                        "INSERT INTO licenses (id, product_id, invoice_id, license_key, issued_at)"
                        " VALUES ($1, $2, $3, 'WEBHOOK', $4) ON CONFLICT (invoice_id) DO NOTHING",
                        str(uuid.uuid4()), product_id, invoice_id, ts())
            done.append(invoice_id)
            await asyncio.sleep(0.001)
        print(json.dumps(done))

    asyncio.run(main(sys.argv[1], json.loads(sys.stdin.read())))
    """
)


async def check_invariants(conn: Any, plan: dict[str, str]) -> None:
    rows = await conn.fetch("SELECT id, status, lease_token FROM invoices")
    expected = {"settle": "settled", "expire": "expired", "invalidate": "invalid", "pending": "pending"}
    for row in rows:
        assert row["status"] == expected[plan[row["id"]]], (row["id"], plan[row["id"]], row["status"])
        assert row["lease_token"] is None
    doubled = await conn.fetch("SELECT invoice_id FROM licenses GROUP BY invoice_id HAVING count(*) > 1")
    assert doubled == []
    unlicensed = await conn.fetchval(
        "SELECT count(*) FROM invoices i WHERE status = 'settled'"
        " AND NOT EXISTS (SELECT 1 FROM licenses l WHERE l.invoice_id = i.id)"
    )
    assert unlicensed == 0
    settled_audits = await conn.fetch(
        "SELECT target_id FROM audit_log WHERE action = 'invoice.settled' GROUP BY target_id HAVING count(*) > 1"
    )
    assert settled_audits == []


@pytest.mark.slow
async def test_four_instances_and_a_webhook_handler_race_over_5000_invoices(tmp_path: Path) -> None:
    count = 5000
    async with pg_connection() as (conn, schema):
        url = search_path_url(PG_URL, schema)
        config = write_config(tmp_path, url, count=count, latency=0.002)
        init = subprocess.run(
            [sys.executable, "-m", "reconciler", "--config", str(config), "init-db"],
            capture_output=True,
            text=True,
        )
        assert init.returncode == 0, init.stderr
        pairs = await seed(conn, count, recurring_every=10)
        plan = {iid: planned(int(pid[1:])) for iid, pid in pairs}
        product = await conn.fetchval("SELECT id FROM products")
        to_race = [(iid, product) for iid, pid in pairs if plan[iid] == "settle" and random.random() < 0.3]

        instances = [reconciler(config, "--once") for _ in range(4)]
        webhook = subprocess.Popen(
            [sys.executable, "-c", WEBHOOK, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        hook_out, hook_err = webhook.communicate(json.dumps(to_race), timeout=300)
        assert webhook.returncode == 0, hook_err
        for code, stderr in wait_all(instances):
            assert code == 0, stderr[-3000:]

        # every claim is accounted for: each claimed invoice got exactly one decision (or was fenced)
        summaries = [
            json.loads(r["last_summary"])
            for r in await conn.fetch("SELECT last_summary FROM reconciler_instances")
        ]
        assert len(summaries) == 4
        for summary in summaries:
            assert sum(summary["counts"].values()) == summary["claimed"]
        # and nothing was claimed twice: invoices the webhook finished first were simply never claimed
        assert sum(s["claimed"] for s in summaries) <= count
        assert sum(1 for s in summaries if sum(s["counts"].values()) > 0) >= 2  # the work was shared

        # the webhook's status-only flips left settled invoices without licenses: a final pass recovers them
        await conn.execute("UPDATE invoices SET next_check_at = NULL")
        ((code, stderr),) = wait_all([reconciler(config, "--once")])
        assert code == 0, stderr[-3000:]
        await check_invariants(conn, plan)
        webhook_licenses = await conn.fetchval("SELECT count(*) FROM licenses WHERE license_key = 'WEBHOOK'")
        issued = await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'license.issued'")
        settled = await conn.fetchval("SELECT count(*) FROM invoices WHERE status = 'settled'")
        assert webhook_licenses + issued == settled
        assert len(json.loads(hook_out)) == len(to_race)


@pytest.mark.slow
async def test_a_killed_instance_is_finished_by_another_after_its_lease_expires(tmp_path: Path) -> None:
    count = 40
    async with pg_connection() as (conn, schema):
        url = search_path_url(PG_URL, schema)
        config = write_config(tmp_path, url, count=count, latency=0.8, lease="4s", fast_fail=True)
        init = subprocess.run(
            [sys.executable, "-m", "reconciler", "--config", str(config), "init-db"],
            capture_output=True,
            text=True,
        )
        assert init.returncode == 0, init.stderr
        pairs = await seed(conn, count)
        plan = {iid: planned(int(pid[1:])) for iid, pid in pairs}

        victim = reconciler(config, "--once")
        deadline = time.monotonic() + 30
        while not await conn.fetchval("SELECT count(*) FROM invoices WHERE lease_owner IS NOT NULL"):
            assert time.monotonic() < deadline and victim.poll() is None
            time.sleep(0.05)
        time.sleep(0.3)
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=10)
        held = await conn.fetchval("SELECT count(*) FROM invoices WHERE lease_owner IS NOT NULL")
        assert held > 0  # it died holding leases

        # a second instance right away cannot take the dead one's live leases ...
        ((code, stderr),) = wait_all([reconciler(config, "--once")])
        assert code == 0, stderr[-3000:]
        assert await conn.fetchval("SELECT count(*) FROM invoices WHERE lease_owner IS NOT NULL") > 0
        # ... and once they expire it finishes them: nothing lost, nothing doubled
        time.sleep(4.5)
        await conn.execute("UPDATE invoices SET next_check_at = NULL WHERE status = 'pending'")
        ((code, stderr),) = wait_all([reconciler(config, "--once")])
        assert code == 0, stderr[-3000:]
        await check_invariants(conn, plan)
