"""Seed a shop database the way a storefront would: plain SQL on the shared schema, synchronous sqlite3.

Used by in-process tests and by subprocess tests (which seed a file, then run `reconciler`).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler.store import queries
from reconciler.timeutil import format_ts

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def create_schema(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(queries.schema_sql())
        db.execute("PRAGMA journal_mode = WAL")


@dataclass
class Shop:
    """A storefront's view of the database: inserts rows, reads results."""

    path: Path

    def connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys = ON")
        return db

    def execute(self, sql: str, params: Any = ()) -> None:
        with self.connect() as db:
            db.execute(sql, params)

    def rows(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        db = self.connect()
        try:
            return list(db.execute(sql, params).fetchall())
        finally:
            db.close()

    def scalar(self, sql: str, params: Any = ()) -> Any:
        rows = self.rows(sql, params)
        return rows[0][0] if rows else None

    def product(self, slug: str = "app", *, created_at: datetime = T0) -> str:
        pid = new_id()
        self.execute(
            "INSERT INTO products (id, slug, name, created_at) VALUES (?, ?, ?, ?)",
            (pid, slug, slug.title(), format_ts(created_at)),
        )
        return pid

    def policy(
        self,
        product_id: str,
        slug: str = "default",
        *,
        duration_seconds: int = 0,
        is_trial: bool = False,
        is_recurring: bool = False,
        trial_days: int = 0,
        renewal_period_days: int = 0,
        grace_seconds: int = 0,
        max_machines: int = 1,
        entitlements: list[str] | None = None,
        active: bool = True,
        created_at: datetime = T0,
    ) -> str:
        pid = new_id()
        self.execute(
            "INSERT INTO policies (id, product_id, slug, duration_seconds, is_trial, is_recurring, trial_days,"
            " renewal_period_days, grace_seconds, max_machines, entitlements, active, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                pid,
                product_id,
                slug,
                duration_seconds,
                int(is_trial),
                int(is_recurring),
                trial_days,
                renewal_period_days,
                grace_seconds,
                max_machines,
                json.dumps(entitlements or []),
                int(active),
                format_ts(created_at),
            ),
        )
        return pid

    def invoice(
        self,
        product_id: str,
        *,
        provider: str | None = "fake",
        provider_invoice_id: str | None = None,
        status: str = "pending",
        amount_sats: int = 10_000,
        policy_id: str | None = None,
        created_at: datetime = T0,
        listed_currency: str | None = None,
        listed_value: int | None = None,
        buyer_email: str | None = "buyer@example.com",
        subscription_id: str | None = None,
        invoice_id: str | None = None,
    ) -> str:
        iid = invoice_id or new_id()
        self.execute(
            "INSERT INTO invoices (id, payment_provider_id, provider_invoice_id, product_id, policy_id, status,"
            " amount_sats, listed_currency, listed_value, buyer_email, subscription_id, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                iid,
                provider,
                provider_invoice_id or f"p-{iid}",
                product_id,
                policy_id,
                status,
                amount_sats,
                listed_currency,
                listed_value,
                buyer_email,
                subscription_id,
                format_ts(created_at),
                format_ts(created_at),
            ),
        )
        return iid

    def discount(self, invoice_id: str, *, code: str | None = None, used_count: int = 1) -> str:
        code_id = new_id()
        self.execute(
            "INSERT INTO discount_codes (id, code, max_uses, used_count) VALUES (?, ?, NULL, ?)",
            (code_id, code or f"CODE-{code_id[:8]}", used_count),
        )
        self.execute(
            "INSERT INTO discount_redemptions (id, code_id, invoice_id, status, created_at, updated_at)"
            " VALUES (?, ?, ?, 'pending', ?, ?)",
            (new_id(), code_id, invoice_id, format_ts(T0), format_ts(T0)),
        )
        return code_id

    # -- reads ---------------------------------------------------------------------------------------------
    def status(self, invoice_id: str) -> str:
        return str(self.scalar("SELECT status FROM invoices WHERE id = ?", (invoice_id,)))

    def invoice_row(self, invoice_id: str) -> sqlite3.Row:
        return self.rows("SELECT * FROM invoices WHERE id = ?", (invoice_id,))[0]

    def licenses(self, invoice_id: str) -> list[sqlite3.Row]:
        return self.rows("SELECT * FROM licenses WHERE invoice_id = ?", (invoice_id,))

    def audits(self, target_id: str | None = None, action: str | None = None) -> list[sqlite3.Row]:
        sql = "SELECT * FROM audit_log WHERE 1 = 1"
        params: list[Any] = []
        if target_id is not None:
            sql += " AND target_id = ?"
            params.append(target_id)
        if action is not None:
            sql += " AND action = ?"
            params.append(action)
        return self.rows(sql + " ORDER BY occurred_at, id", params)

    def actions(self, target_id: str) -> list[str]:
        return [row["action"] for row in self.audits(target_id)]


def hours(n: float) -> timedelta:
    return timedelta(hours=n)
