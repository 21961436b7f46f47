"""What `bench/pass.py` measures a pass over: N due invoices, the same in the shop database and in the
fake BTCPay store.

Every invoice is pending, at the one BTCPay provider, and created within the last hour (inside the
default `max_age`, dense in the store's creation window); BTCPay answers each with an outcome from the
mix. `settled`: every invoice is Settled, paid in full (each settle writes a license: the expensive
path). `mixed`: five in eight settle, one expires, one turns invalid and one is still New. `pending`: every
invoice is New (bench/webhooks.py pays them one by one).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.store import queries
from reconciler.timeutil import format_ts
from tests.fakes.btcpay import API_KEY, STORE_ID, Payment, make_invoice

__all__ = [
    "API_KEY",
    "MIXES",
    "PROVIDER",
    "STORE_ID",
    "Planned",
    "btcpay_invoice",
    "expected_statuses",
    "pg_seed",
    "plan",
    "sqlite_template",
]

PROVIDER = "btcpay"
AMOUNT_SATS = 100_000  # what make_invoice's default 0.001 BTC is
WINDOW_SECONDS = 3600
_NAMESPACE = uuid.UUID("5b0c1a8e-3f4d-4c1e-9a57-2f1f6f0b3c11")
PRODUCT_ID = str(uuid.uuid5(_NAMESPACE, "product"))
POLICY_ID = str(uuid.uuid5(_NAMESPACE, "policy"))

MIXES: dict[str, tuple[str, ...]] = {
    "settled": ("settle",),
    "mixed": ("settle", "settle", "settle", "expire", "settle", "invalidate", "settle", "pending"),
    # bench/webhooks.py: every invoice New until the bench pays it (bench/fake_server.py's `POST /pay`)
    "pending": ("pending",),
}
FINAL_STATUS = {"settle": "settled", "expire": "expired", "invalidate": "invalid", "pending": "pending"}
_BTCPAY: dict[str, dict[str, Any]] = {
    "settle": {"status": "Settled", "payments": [Payment("0.001")]},
    "expire": {"status": "Expired"},
    "invalidate": {"status": "Invalid", "payments": [Payment("0.001", status="Invalid")]},
    "pending": {"status": "New"},
}


@dataclass(frozen=True, slots=True)
class Planned:
    """One invoice: our row's id, BTCPay's id, its creation (unix seconds) and what BTCPay answers."""

    invoice_id: str
    provider_invoice_id: str
    created: int
    outcome: str


def plan(count: int, now: int, mix: str) -> list[Planned]:
    """`count` invoices created evenly over the hour before `now` (the newest a minute old)."""
    outcomes = MIXES[mix]
    span = WINDOW_SECONDS - 60
    return [
        Planned(
            invoice_id=str(uuid.uuid5(_NAMESPACE, f"invoice {i}")),
            provider_invoice_id=f"Bench{i:07d}",
            created=now - 60 - (i * span) // max(count, 1),
            outcome=outcomes[i % len(outcomes)],
        )
        for i in range(count)
    ]


def expected_statuses(planned: Sequence[Planned]) -> dict[str, int]:
    """`invoices.status` counts once every invoice has been reconciled."""
    return dict(Counter(FINAL_STATUS[p.outcome] for p in planned))


def btcpay_invoice(planned: Planned) -> dict[str, Any]:
    """The fake's `InvoiceData` for `planned`."""
    return make_invoice(planned.provider_invoice_id, **_BTCPAY[planned.outcome], created=planned.created)


def _timestamp(unix: int) -> str:
    return format_ts(datetime.fromtimestamp(unix, UTC))


def _invoice_rows(planned: Sequence[Planned]) -> list[tuple[str, str, str, str, int, str, str]]:
    return [
        (
            p.invoice_id,
            PROVIDER,
            p.provider_invoice_id,
            PRODUCT_ID,
            AMOUNT_SATS,
            _timestamp(p.created),
            _timestamp(p.created),
        )
        for p in planned
    ]


_INVOICE_COLUMNS = (
    "id",
    "payment_provider_id",
    "provider_invoice_id",
    "product_id",
    "amount_sats",
    "created_at",
    "updated_at",
)


def sqlite_template(path: Path, planned: Sequence[Planned], now: int) -> None:
    """A fresh SQLite shop at `path` (one file, rollback journal, so a plain copy is a whole database)."""
    db = sqlite3.connect(path)
    try:
        db.executescript(queries.schema_sql())
        with db:
            db.execute(
                "INSERT INTO products (id, slug, name, created_at) VALUES (?, 'app', 'App', ?)",
                (PRODUCT_ID, _timestamp(now - 86_400)),
            )
            db.execute(
                "INSERT INTO policies (id, product_id, slug, duration_seconds, entitlements, created_at)"
                " VALUES (?, ?, 'default', 31536000, '[\"pro\"]', ?)",
                (POLICY_ID, PRODUCT_ID, _timestamp(now - 86_400)),
            )
            db.executemany(
                f"INSERT INTO invoices ({', '.join(_INVOICE_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                _invoice_rows(planned),
            )
    finally:
        db.close()


async def pg_seed(conn: Any, schema: str, planned: Sequence[Planned], now: int) -> None:
    """Create the schema `schema` on asyncpg connection `conn` and seed it like `sqlite_template`."""
    await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.execute(f"SET search_path TO {schema}")
    await conn.execute(queries.schema_sql())
    await conn.execute(
        "INSERT INTO products (id, slug, name, created_at) VALUES ($1, 'app', 'App', $2)",
        PRODUCT_ID,
        _timestamp(now - 86_400),
    )
    await conn.execute(
        "INSERT INTO policies (id, product_id, slug, duration_seconds, entitlements, created_at)"
        " VALUES ($1, $2, 'default', 31536000, '[\"pro\"]', $3)",
        POLICY_ID,
        PRODUCT_ID,
        _timestamp(now - 86_400),
    )
    await conn.copy_records_to_table(
        "invoices", records=_invoice_rows(planned), columns=list(_INVOICE_COLUMNS), schema_name=schema
    )
