"""The original reconcile algorithm, variant (a) of `bench/pass.py`: what the reconcile tick of the Rust
service this project replaces did, written again in Python for the benchmark.

    .venv/bin/python bench/original.py --database URL --base-url URL --store-id ID --api-key-file F \
        --signing-key-file F [--provider btcpay]

One query lists every pending invoice created within 72 h; then, one invoice after the other: one
Greenfield GET, and for a final status a status update and, for a settle, a license row, each statement
its own transaction. Expired and invalid invoices give back a pending discount redemption's slot; a
settle compares BTCPay's amount with ours (a warning only, as the original's tripwire never blocks). No
leases, no schedule, no audit rows, no retries: a failed GET is skipped until the next tick.

Prints one JSON line: what the tick did and how long its loop took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconciler import licenses  # noqa: E402
from reconciler.models import Policy  # noqa: E402
from reconciler.timeutil import format_ts  # noqa: E402

MAX_AGE = timedelta(hours=72)
# BTCPay's statuses (legacy names too) that end an invoice; anything else leaves it pending.
_FINAL = {
    "settled": "settled",
    "complete": "settled",
    "confirmed": "settled",
    "expired": "expired",
    "invalid": "invalid",
}
_PENDING_COLUMNS = "id, provider_invoice_id, payment_provider_id, product_id, policy_id, status, amount_sats"
_POLICY_COLUMNS = (
    "id, product_id, slug, duration_seconds, is_trial, is_recurring, trial_days, renewal_period_days,"
    " grace_seconds, max_machines, entitlements, active, created_at"
)


class Database:
    """One connection, every statement committed on its own (SQLite file or PostgreSQL URL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Any = None

    async def open(self) -> None:
        if self.url.startswith("sqlite://"):
            self._sqlite = sqlite3.connect(self.url.removeprefix("sqlite://"), isolation_level=None)
            self._sqlite.execute("PRAGMA journal_mode = WAL")
            self._sqlite.execute("PRAGMA synchronous = NORMAL")
            self._sqlite.execute("PRAGMA foreign_keys = ON")
        else:
            import asyncpg

            self._pg = await asyncpg.connect(self.url)

    async def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg is not None:
            await self._pg.close()

    @staticmethod
    def _numbered(sql: str) -> str:
        parts = sql.split("?")
        return parts[0] + "".join(f"${n}{rest}" for n, rest in enumerate(parts[1:], start=1))

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if self._sqlite is not None:
            return list(self._sqlite.execute(sql, args).fetchall())
        return [tuple(record) for record in await self._pg.fetch(self._numbered(sql), *args)]

    async def execute(self, sql: str, *args: Any) -> None:
        if self._sqlite is not None:
            self._sqlite.execute(sql, args)
        else:
            await self._pg.execute(self._numbered(sql), *args)


def _policy(row: Sequence[Any]) -> Policy:
    return Policy(
        id=row[0],
        product_id=row[1],
        slug=row[2],
        duration_seconds=int(row[3]),
        is_trial=bool(row[4]),
        is_recurring=bool(row[5]),
        trial_days=int(row[6]),
        renewal_period_days=int(row[7]),
        grace_seconds=int(row[8]),
        max_machines=int(row[9]),
        entitlements=tuple(json.loads(row[10])),
        active=bool(row[11]),
        created_at=row[12],
    )


def _sats(amount: Any, currency: Any) -> int | None:
    if not isinstance(amount, str) or currency not in ("BTC", "SATS"):
        return None
    try:
        value = Decimal(amount)
    except InvalidOperation:
        return None
    return int(value * 100_000_000) if currency == "BTC" else int(value)


class Tick:
    def __init__(self, db: Database, session: aiohttp.ClientSession, args: argparse.Namespace) -> None:
        self.db = db
        self.session = session
        self.provider = args.provider
        self.invoices_url = f"{args.base_url.rstrip('/')}/api/v1/stores/{args.store_id}/invoices"
        self.auth = {"Authorization": f"token {args.api_key_file.read_text().strip()}"}
        self.key = licenses.load_signing_key(args.signing_key_file)
        self.done: Counter[str] = Counter()

    async def run(self) -> None:
        cutoff = format_ts(datetime.now(UTC) - MAX_AGE)
        pending = await self.db.rows(
            f"SELECT {_PENDING_COLUMNS} FROM invoices WHERE status = 'pending' AND created_at >= ?"
            " ORDER BY created_at",
            cutoff,
        )
        for invoice in pending:
            await self.reconcile(invoice)

    async def reconcile(self, invoice: Sequence[Any]) -> None:
        invoice_id, provider_invoice_id, provider_id, _, _, status, _ = invoice
        if provider_id != self.provider:
            self.done["skipped"] += 1  # its provider is not configured here
            return
        try:
            async with self.session.get(f"{self.invoices_url}/{provider_invoice_id}", headers=self.auth) as r:
                if r.status != 200:
                    self.done[f"http_{r.status}"] += 1
                    return
                body = await r.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            self.done["fetch_failed"] += 1
            return
        raw = body.get("status") if isinstance(body, dict) else None
        new_status = _FINAL.get(raw.lower()) if isinstance(raw, str) else None
        if new_status is None or new_status == status:
            self.done["no_change"] += 1
            return
        now = format_ts(datetime.now(UTC))
        settled_at = now if new_status == "settled" else None
        await self.db.execute(
            "UPDATE invoices SET status = ?, updated_at = ?, settled_at = COALESCE(?, settled_at)"
            " WHERE payment_provider_id = ? AND provider_invoice_id = ?",
            new_status,
            now,
            settled_at,
            self.provider,
            provider_invoice_id,
        )
        self.done[new_status] += 1
        if new_status in ("expired", "invalid"):
            await self.release_discount(invoice_id, now)
        else:
            self.check_amount(invoice, body)
            await self.ensure_license(invoice)

    async def release_discount(self, invoice_id: str, now: str) -> None:
        for redemption_id, code_id in await self.db.rows(
            "SELECT id, code_id FROM discount_redemptions WHERE invoice_id = ? AND status = 'pending'",
            invoice_id,
        ):
            await self.db.execute(
                "UPDATE discount_redemptions SET status = 'cancelled', updated_at = ? WHERE id = ?",
                now,
                redemption_id,
            )
            await self.db.execute(
                "UPDATE discount_codes SET used_count = used_count - 1 WHERE id = ? AND used_count > 0",
                code_id,
            )

    def check_amount(self, invoice: Sequence[Any], body: dict[str, Any]) -> None:
        provider_sats = _sats(body.get("amount"), body.get("currency"))
        if provider_sats is not None and provider_sats != invoice[6]:
            self.done["amount_mismatch"] += 1
            print(f"warning: invoice {invoice[0]}: BTCPay says {provider_sats} sats", file=sys.stderr)

    async def ensure_license(self, invoice: Sequence[Any]) -> None:
        invoice_id, _, _, product_id, policy_id, _, _ = invoice
        if await self.db.rows("SELECT id FROM licenses WHERE invoice_id = ?", invoice_id):
            return
        if policy_id is not None:
            rows = await self.db.rows(f"SELECT {_POLICY_COLUMNS} FROM policies WHERE id = ?", policy_id)
            policy = _policy(rows[0]) if rows else None
        else:
            rows = await self.db.rows(
                f"SELECT {_POLICY_COLUMNS} FROM policies WHERE product_id = ? AND active = 1", product_id
            )
            chosen = licenses.choose_policy(None, [_policy(row) for row in rows])
            policy = chosen if isinstance(chosen, Policy) else None
        license_id = str(uuid.uuid4())
        terms = licenses.license_terms(policy, datetime.now(UTC).replace(microsecond=0))
        key = licenses.sign_license(self.key, product_id=product_id, license_id=license_id, terms=terms)
        await self.db.execute(
            "INSERT INTO licenses (id, product_id, policy_id, invoice_id, license_key, issued_at, expires_at,"
            " grace_seconds, max_machines, entitlements, is_trial) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            license_id,
            product_id,
            terms.policy_id,
            invoice_id,
            key,
            format_ts(terms.issued_at),
            None if terms.expires_at is None else format_ts(terms.expires_at),
            terms.grace_seconds,
            terms.max_machines,
            json.dumps(list(terms.entitlements)),
            int(terms.is_trial),
        )
        self.done["licensed"] += 1


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--database", required=True, help="sqlite:///path or postgresql://...")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--store-id", required=True)
    parser.add_argument("--api-key-file", type=Path, required=True)
    parser.add_argument("--signing-key-file", type=Path, required=True)
    parser.add_argument("--provider", default="btcpay", help="the payment_provider_id it serves")
    args = parser.parse_args(argv)
    db = Database(args.database)
    await db.open()
    try:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            tick = Tick(db, session, args)
            started = time.perf_counter()
            await tick.run()
            elapsed = time.perf_counter() - started
    finally:
        await db.close()
    print(json.dumps({"pass_s": round(elapsed, 3), "counts": dict(tick.done)}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
