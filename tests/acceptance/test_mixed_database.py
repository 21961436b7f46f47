"""Issue 10's acceptance case: a database where good invoices are interleaved with one of every kind of bad
row we can construct on the engine, reconciled by the real `reconciler --once`.

Every good invoice ends in its provider's state with exactly one license where settled; every bad row is
audited once and listed by `status`; no lease is left; the pass exits 75 (degraded by what it quarantined).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler import licenses
from reconciler.timeutil import format_ts
from tests.acceptance.conftest import COMMAND, TIMEOUT, toml
from tests.conftest import PG_URL, pg_connection
from tests.support.pg_cluster import search_path_url
from tests.support.process import clean_env
from tests.support.shop import Shop, create_schema

ANSWERS = {
    "settle": {"status": "SETTLED", "raw_status": "Settled", "amount_sats": 1000, "currency": "BTC"},
    "expire": {"status": "EXPIRED", "raw_status": "Expired"},
    "invalidate": {"status": "INVALID", "raw_status": "Invalid"},
    "pending": {"status": "PENDING", "raw_status": "New"},
}
FINAL = {"settle": "settled", "expire": "expired", "invalidate": "invalid", "pending": "pending"}
GOOD = 24

Execute = Callable[[str, tuple[Any, ...]], Awaitable[None]]


async def seed(execute: Execute, engine: str) -> tuple[dict[str, str], dict[str, str]]:
    """Good invoices (id -> planned outcome) and bad rows (id -> the audit action it must get)."""
    now = datetime.now(UTC)
    created = format_ts(now - timedelta(minutes=20))
    product, other = str(uuid.uuid4()), str(uuid.uuid4())
    for pid, slug in ((product, "app"), (other, "other")):
        await execute(
            "INSERT INTO products (id, slug, name, created_at) VALUES (?, ?, ?, ?)",
            (pid, slug, slug, created),
        )
    await execute(
        "INSERT INTO products (id, slug, name, created_at) VALUES ('not-a-uuid', 'legacy', 'L', ?)",
        (created,),
    )
    good_policy, bad_policy, huge_policy = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    await execute(
        "INSERT INTO policies (id, product_id, slug, entitlements, created_at) VALUES (?, ?, 'default', ?, ?)",
        (good_policy, product, '["pro"]', created),
    )
    await execute(
        "INSERT INTO policies (id, product_id, slug, entitlements, created_at) VALUES (?, ?, 'broken', ?, ?)",
        (bad_policy, other, "pro,team" if engine == "sqlite" else "[1]", created),
    )
    await execute(
        "INSERT INTO policies (id, product_id, slug, trial_days, is_recurring, created_at)"
        " VALUES (?, ?, 'huge', ?, 1, ?)",
        (huge_policy, other, 100_000_000, created),
    )

    async def invoice(
        pinv: str, *, product_id: str = product, provider: str | None = "fake", **extra: Any
    ) -> str:
        iid = str(uuid.uuid4())
        columns = {
            "id": iid,
            "payment_provider_id": provider,
            "provider_invoice_id": pinv,
            "product_id": product_id,
            "amount_sats": 1000,
            "created_at": created,
        } | extra
        names = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        await execute(f"INSERT INTO invoices ({names}) VALUES ({marks})", tuple(columns.values()))
        return iid

    good: dict[str, str] = {}
    bad: dict[str, str] = {}
    plans = ("settle", "settle", "expire", "settle", "invalidate", "pending")

    async def good_one(n: int) -> None:
        plan = plans[n % len(plans)]
        good[await invoice(f"G{n}-{plan}")] = plan

    n = 0
    for kind in ("created_at", "settled_at", "bad_policy", "huge_policy", "duplicate", "encoding"):
        for _ in range(GOOD // 6):
            await good_one(n)
            n += 1
        if kind == "created_at":  # passes the CHECK (length, 'T', 'Z'), is no time
            bad[await invoice("B-created", created_at="2026-12-01T19:61:00.000000Z")] = "invoice.unreadable"
        elif kind == "settled_at":  # a recovery candidate whose settled_at is no time
            bad[await invoice("B-settled", status="settled", settled_at="2026-13-01T00:00:00.000000Z")] = (
                "invoice.unreadable"
            )
        elif kind == "bad_policy":
            bad[await invoice("B-policy", product_id=other, policy_id=bad_policy)] = "invoice.unreadable"
        elif kind == "huge_policy":
            bad[await invoice("B-huge", product_id=other, policy_id=huge_policy)] = "invoice.unreadable"
        elif kind == "duplicate":
            good[await invoice("DUP-settle", provider=None)] = "settle"
            later = format_ts(now - timedelta(minutes=19))
            bad[await invoice("DUP-settle", created_at=later)] = "invoice.duplicate"
        else:
            bad[await invoice("B-legacy", product_id="not-a-uuid")] = "license.issue_failed"
    if engine == "sqlite":  # what only a loosely typed engine lets a storefront write
        bad[await invoice("B-amount", amount_sats="ten")] = "invoice.unreadable"
        bad[await invoice("B-listed", listed_value=2.5)] = "invoice.unreadable"
        bad[await invoice("B-email", buyer_email=b"\xff\xfe")] = "invoice.unreadable"
        # text that is not UTF-8 (sqlite3 would refuse to decode the whole claimed batch)
        bad[not_utf8 := await invoice("B-utf8")] = "invoice.unreadable"
        await execute("UPDATE invoices SET buyer_email = CAST(X'ff61' AS TEXT) WHERE id = ?", (not_utf8,))
    return good, bad


def config_for(tmp_path: Path, url: str) -> Path:
    planned_script(tmp_path, {})
    key = tmp_path / "key.pem"
    licenses.write_new_key(key)
    path = tmp_path / "config.toml"
    path.write_text(
        toml(
            {
                "default_provider": "fake",
                "database": {"url": url},
                "license": {"signing_key_file": str(key)},
                "reconcile": {"batch_size": 7},
                "providers": {"fake": {"driver": "fake", "script_path": str(tmp_path / "script.json")}},
            }
        )
    )
    return path


def planned_script(tmp_path: Path, provider_ids: dict[str, str]) -> None:
    """The fake provider's answers: each good invoice's plan, settled for everything else."""
    script: dict[str, Any] = {"*": [ANSWERS["settle"]]}
    for pinv, plan in provider_ids.items():
        script[pinv] = [ANSWERS[plan]]
    (tmp_path / "script.json").write_text(json.dumps(script))


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=TIMEOUT,
    )


async def check(
    rows: Callable[[str], Awaitable[list[dict[str, Any]]]], good: dict[str, str], bad: dict[str, str]
) -> None:
    invoices = {r["id"]: r for r in await rows("SELECT id, status, lease_token FROM invoices")}
    licensed: dict[str, int] = {}
    for r in await rows("SELECT invoice_id, count(*) AS n FROM licenses GROUP BY invoice_id"):
        licensed[r["invoice_id"]] = int(r["n"])
    for iid, plan in good.items():
        assert invoices[iid]["status"] == FINAL[plan], (iid, plan)
        assert licensed.get(iid, 0) == (1 if plan == "settle" else 0), (iid, plan)
    for iid, action in bad.items():
        assert licensed.get(iid, 0) == 0, iid
        audits = await rows(f"SELECT action FROM audit_log WHERE target_id = '{iid}'")
        assert [a["action"] for a in audits].count(action) == 1, (iid, action, audits)
    assert all(r["lease_token"] is None for r in invoices.values())


async def reconcile_and_check(
    config: Path,
    rows: Callable[[str], Awaitable[list[dict[str, Any]]]],
    good: dict[str, str],
    bad: dict[str, str],
) -> None:
    once = run(config, "--once")
    assert once.returncode == 75, once.stderr[-4000:]
    assert "Traceback" not in once.stderr
    await check(rows, good, bad)
    status = run(config, "status", "--json")
    assert status.returncode == 0, status.stderr
    listed = {q["invoice_id"] for q in json.loads(status.stdout)["quarantined"]["invoices"]}
    held = {iid for iid, action in bad.items() if action in ("invoice.unreadable", "invoice.duplicate")}
    assert held <= listed, (held - listed, status.stdout)
    # and a second pass later writes no second audit row for any of them
    once = run(config, "--once")
    assert once.returncode in (0, 75), once.stderr[-4000:]
    await check(rows, good, bad)


async def test_a_mixed_sqlite_database(tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    create_schema(db)
    shop = Shop(db)

    async def execute(sql: str, params: tuple[Any, ...]) -> None:
        shop.execute(sql, params)

    async def rows(sql: str) -> list[dict[str, Any]]:
        return [dict(r) for r in shop.rows(sql)]

    good, bad = await seed(execute, "sqlite")
    config = config_for(tmp_path, f"sqlite://{db}")
    provider_ids = {
        r["provider_invoice_id"]: r["id"] for r in await rows("SELECT id, provider_invoice_id FROM invoices")
    }
    planned_script(tmp_path, {pinv: good[iid] for pinv, iid in provider_ids.items() if iid in good})
    await reconcile_and_check(config, rows, good, bad)


@pytest.mark.postgres
async def test_a_mixed_postgresql_database(tmp_path: Path) -> None:
    from reconciler.store.postgres import positional

    async with pg_connection() as (conn, schema):
        url = search_path_url(PG_URL, schema)
        config = config_for(tmp_path, url)
        init = subprocess.run(
            [sys.executable, "-m", "reconciler", "--config", str(config), "init-db"],
            capture_output=True,
            text=True,
            env=clean_env(),
        )
        assert init.returncode == 0, init.stderr

        async def execute(sql: str, params: tuple[Any, ...]) -> None:
            n = 0

            def number(_: Any) -> str:
                nonlocal n
                n += 1
                return f"${n}"

            await conn.execute(re.sub(r"\?", number, sql), *params)

        async def rows(sql: str) -> list[dict[str, Any]]:
            text, _ = positional(sql)
            return [dict(r) for r in await conn.fetch(text)]

        good, bad = await seed(execute, "postgres")
        provider_ids = {
            r["provider_invoice_id"]: r["id"]
            for r in await rows("SELECT id, provider_invoice_id FROM invoices")
        }
        planned_script(tmp_path, {pinv: good[iid] for pinv, iid in provider_ids.items() if iid in good})
        await reconcile_and_check(config, rows, good, bad)
