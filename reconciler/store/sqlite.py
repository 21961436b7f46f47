"""The SQLite store (aiosqlite): WAL, a busy timeout, foreign keys, `BEGIN IMMEDIATE` for every write.

One connection per store, serialised by a lock: SQLite has one writer at a time anyway, and several processes on
one host (the service and an overlapping `--once`) coordinate through the file's lock and the busy timeout.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite

from reconciler import errors, ids
from reconciler.models import Invoice, InvoiceStatus, Policy
from reconciler.store import base, queries
from reconciler.timeutil import format_ts, parse_ts

BUSY_TIMEOUT_MS = 30_000


class SqliteStore(base.Store):
    def __init__(self, connection: aiosqlite.Connection, path: Path) -> None:
        self._db = connection
        self._path = path
        self._lock = asyncio.Lock()
        self._q = queries.load("sqlite.sql")

    @classmethod
    async def open(cls, path: Path, *, create: bool = False) -> SqliteStore:
        """Open the database file; it must exist unless `create` (only `init-db` creates one)."""
        if not create and not await asyncio.to_thread(path.exists):
            raise errors.SchemaError(
                f"database file {path} does not exist: create it with `reconciler init-db`"
            )
        try:
            connection = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise errors.StoreUnavailable(f"cannot open SQLite database {path}: {exc}") from exc
        connection.row_factory = sqlite3.Row
        await connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await connection.execute("PRAGMA journal_mode = WAL")
        await connection.execute("PRAGMA synchronous = NORMAL")
        await connection.execute("PRAGMA foreign_keys = ON")
        return cls(connection, path)

    async def close(self) -> None:
        await self._db.close()

    # -- plumbing -----------------------------------------------------------------------------------------
    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One `BEGIN IMMEDIATE` transaction: committed on success, rolled back on any exception."""
        async with self._lock:
            try:
                await self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if not _unavailable(exc):
                    raise
                raise errors.StoreUnavailable(f"SQLite database {self._path} is busy: {exc}") from exc
            try:
                yield self._db
            except sqlite3.OperationalError as exc:
                await self._rollback()
                if not _unavailable(exc):
                    raise
                raise errors.StoreUnavailable(f"SQLite write failed: {exc}") from exc
            except BaseException:
                await self._rollback()
                raise
            try:
                await self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                await self._rollback()
                if not _unavailable(exc):
                    raise
                raise errors.StoreUnavailable(f"SQLite commit failed: {exc}") from exc

    async def _rollback(self) -> None:
        # Some errors (SQLITE_FULL, IOERR, ...) have already rolled the transaction back.
        if self._db.in_transaction:
            await self._db.execute("ROLLBACK")

    async def _fetchall(self, name: str, params: dict[str, Any]) -> list[sqlite3.Row]:
        async with self._lock:
            try:
                cursor = await self._db.execute(self._q[name], params)
                rows = await cursor.fetchall()
            except sqlite3.OperationalError as exc:
                if not _unavailable(exc):
                    raise
                raise errors.StoreUnavailable(f"SQLite query {name} failed: {exc}") from exc
        return list(rows)

    async def _exec(self, db: aiosqlite.Connection, name: str, params: dict[str, Any]) -> int:
        cursor = await db.execute(self._q[name], params)
        return cursor.rowcount

    async def _returning(
        self, db: aiosqlite.Connection, name: str, params: dict[str, Any]
    ) -> list[sqlite3.Row]:
        cursor = await db.execute(self._q[name], params)
        return list(await cursor.fetchall())

    async def _audit(
        self, db: aiosqlite.Connection, now: datetime, records: Sequence[base.AuditRecord]
    ) -> None:
        for record in records:
            await db.execute(
                self._q["insert_audit"],
                {
                    "id": ids.uuid7(now),
                    "occurred_at": format_ts(now),
                    "action": record.action,
                    "target_kind": record.target_kind,
                    "target_id": record.target_id,
                    "details": json.dumps(record.details, sort_keys=True, default=str),
                },
            )

    # -- schema -------------------------------------------------------------------------------------------
    async def schema_version(self) -> int | None:
        tables = {row[0] for row in await self._fetchall("schema_tables", {})}
        return base.check_schema(tables, await self._meta_versions() if "schema_meta" in tables else [])

    async def _meta_versions(self) -> list[Any]:
        async with self._lock:
            try:
                cursor = await self._db.execute(self._q["schema_version"])
                return [row[0] for row in await cursor.fetchall()]
            except sqlite3.OperationalError as exc:
                if _unavailable(exc):
                    raise errors.StoreUnavailable(f"SQLite database {self._path}: {exc}") from exc
                raise errors.SchemaError(
                    f"schema_meta is not ours ({exc}): point database.url at the reconciler's database"
                ) from exc

    async def init_schema(self) -> bool:
        if await self.schema_version() is not None:
            return False
        async with self._lock:
            # executescript commits on its own; the script is a sequence of CREATEs and one INSERT.
            await self._db.executescript("BEGIN IMMEDIATE;\n" + queries.schema_sql() + "\nCOMMIT;")
        return True

    # -- reconcile pass -----------------------------------------------------------------------------------
    async def claim(
        self,
        *,
        owner: str,
        pass_start: datetime,
        now: datetime,
        lease: timedelta,
        max_age: timedelta,
        batch_size: int,
    ) -> list[Invoice]:
        params = {
            "owner": owner,
            "token": ids.new_id(),
            "lease_until": format_ts(now + lease),
            "min_created_at": format_ts(pass_start - max_age),
            "pass_start": format_ts(pass_start),
            "now": format_ts(now),
            "batch_size": batch_size,
        }
        async with self._write() as db:
            rows = await self._returning(db, "claim", params)
        invoices = [_invoice(row) for row in rows]
        invoices.sort(key=_claim_order)
        return invoices

    async def peek(
        self, *, pass_start: datetime, now: datetime, max_age: timedelta, batch_size: int, offset: int
    ) -> list[Invoice]:
        rows = await self._fetchall(
            "peek",
            {
                "min_created_at": format_ts(pass_start - max_age),
                "pass_start": format_ts(pass_start),
                "now": format_ts(now),
                "batch_size": batch_size,
                "offset": offset,
            },
        )
        return [_invoice(row) for row in rows]

    async def get_invoice(self, invoice_id: str) -> Invoice | None:
        rows = await self._fetchall("get_invoice", {"invoice_id": invoice_id})
        return _invoice(rows[0]) if rows else None

    async def release(self, invoice: Invoice, *, next_check_at: datetime | None) -> bool:
        async with self._write() as db:
            changed = await self._exec(
                db,
                "release",
                {
                    "invoice_id": invoice.id,
                    "token": invoice.lease_token,
                    "next_check_at": format_ts(next_check_at) if next_check_at else None,
                },
            )
        return changed == 1

    async def record_check(
        self,
        invoice: Invoice,
        *,
        now: datetime,
        next_check_at: datetime,
        observation: str | None,
        audits: Sequence[base.AuditRecord] = (),
    ) -> bool:
        async with self._write() as db:
            changed = await self._exec(
                db,
                "record_check",
                {
                    "invoice_id": invoice.id,
                    "status": invoice.status.value,
                    "token": invoice.lease_token,
                    "next_check_at": format_ts(next_check_at),
                    "checked_at": format_ts(now) if observation is not None else None,
                    "observation": observation,
                },
            )
            if changed == 1:
                await self._audit(db, now, audits)
        return changed == 1

    async def record_transition(
        self,
        invoice: Invoice,
        *,
        new_status: InvoiceStatus,
        now: datetime,
        next_check_at: datetime,
        observation: str | None,
        audits: Sequence[base.AuditRecord],
    ) -> base.TransitionOutcome | None:
        stamp = format_ts(now)
        async with self._write() as db:
            changed = await self._exec(
                db,
                "transition",
                {
                    "invoice_id": invoice.id,
                    "status": invoice.status.value,
                    "token": invoice.lease_token,
                    "new_status": new_status.value,
                    "now": stamp,
                    "next_check_at": format_ts(next_check_at),
                    "observation": observation,
                },
            )
            if changed != 1:
                return None
            cancelled = await self._returning(
                db, "cancel_redemption", {"invoice_id": invoice.id, "now": stamp}
            )
            for row in cancelled:
                await self._exec(db, "give_back_slot", {"code_id": row[0]})
            extra = {"redemption_cancelled": bool(cancelled)}
            await self._audit(db, now, [_with_details(a, extra) for a in audits])
        return base.TransitionOutcome(redemption_cancelled=bool(cancelled))

    async def record_settlement(
        self, invoice: Invoice, settlement: base.Settlement
    ) -> base.SettleOutcome | None:
        now = settlement.now
        stamp = format_ts(now)
        async with self._write() as db:
            changed = await self._exec(
                db,
                "settle",
                {
                    "invoice_id": invoice.id,
                    "status": invoice.status.value,
                    "token": invoice.lease_token,
                    "now": stamp,
                    "next_check_at": format_ts(settlement.next_check_at),
                    "observation": settlement.observation,
                },
            )
            if changed != 1:
                return None
            audits: list[base.AuditRecord] = list(settlement.audits)
            license_id: str | None = None
            issued = subscription_created = renewed = False
            if settlement.license is not None:
                draft = settlement.license
                inserted = await self._returning(db, "insert_license", _license_params(draft, invoice))
                issued = bool(inserted)
                if issued:
                    license_id = draft.id
                else:
                    existing = await self._returning(db, "license_for_invoice", {"invoice_id": invoice.id})
                    license_id = str(existing[0][0])
                if settlement.subscription is not None:
                    sub = settlement.subscription
                    created = await self._returning(
                        db, "insert_subscription", _subscription_params(sub, license_id, invoice.id, stamp)
                    )
                    subscription_created = bool(created)
                if issued:
                    audits.append(
                        base.AuditRecord(
                            action="license.issued",
                            target_kind="license",
                            target_id=draft.id,
                            details={
                                "invoice_id": invoice.id,
                                "provider_id": settlement.provider_id,
                                "provider_invoice_id": invoice.provider_invoice_id,
                                "policy_id": draft.policy_id,
                                "recovered": settlement.recovered,
                                "subscription_created": subscription_created,
                            },
                        )
                    )
            elif invoice.subscription_id is not None:
                renewed = bool(
                    await self._returning(
                        db, "renew_subscription", {"subscription_id": invoice.subscription_id, "now": stamp}
                    )
                )
                audits.append(
                    base.AuditRecord(
                        action="subscription.renewed",
                        target_kind="invoice",
                        target_id=invoice.id,
                        details={
                            "provider_id": settlement.provider_id,
                            "provider_invoice_id": invoice.provider_invoice_id,
                            "raw_status": _raw_status(settlement.observation),
                            "subscription_id": invoice.subscription_id,
                            "subscription_found": renewed,
                        },
                    )
                )
            redeemed = await self._returning(
                db, "redeem_redemption", {"invoice_id": invoice.id, "license_id": license_id, "now": stamp}
            )
            for row in redeemed:
                audits.append(
                    base.AuditRecord(
                        action="code.redeemed",
                        target_kind="discount_code",
                        target_id=str(row["code_id"]),
                        details={
                            "invoice_id": invoice.id,
                            "license_id": license_id,
                            "redemption_id": row["id"],
                        },
                    )
                )
            for kind in settlement.post_settle_kinds:
                await self._exec(
                    db,
                    "insert_post_settle_task",
                    {
                        "invoice_id": invoice.id,
                        "kind": kind,
                        "provider_id": settlement.provider_id,
                        "now": stamp,
                    },
                )
            await self._audit(db, now, audits)
        return base.SettleOutcome(
            license_id=license_id,
            license_issued=issued,
            subscription_created=subscription_created,
            redemption_redeemed=bool(redeemed),
            subscription_renewed=renewed,
        )

    async def policies_for(self, invoice: Invoice) -> tuple[Policy | None, list[Policy]]:
        own = None
        if invoice.policy_id is not None:
            rows = await self._fetchall("invoice_policy", {"policy_id": invoice.policy_id})
            own = _policy(rows[0]) if rows else None
        product = await self._fetchall("product_policies", {"product_id": invoice.product_id})
        return own, [_policy(row) for row in product]

    async def redemption_status(self, invoice_id: str) -> str | None:
        rows = await self._fetchall("redemption_status", {"invoice_id": invoice_id})
        return str(rows[0][0]) if rows else None

    # -- post-settle tasks --------------------------------------------------------------------------------
    async def due_tasks(self, *, now: datetime, batch_size: int) -> list[base.DueTask]:
        rows = await self._fetchall(
            "due_post_settle_tasks", {"now": format_ts(now), "batch_size": batch_size}
        )
        return [
            base.DueTask(
                invoice_id=r["invoice_id"],
                kind=r["kind"],
                provider_id=r["provider_id"],
                attempts=int(r["attempts"]),
                provider_invoice_id=r["provider_invoice_id"],
                subscription_id=r["subscription_id"],
                has_profile=r["payment_profile_id"] is not None,
            )
            for r in rows
        ]

    async def claim_task(self, task: base.DueTask, *, now: datetime, lease_until: datetime) -> bool:
        async with self._write() as db:
            changed = await self._exec(
                db,
                "claim_post_settle_task",
                {
                    "invoice_id": task.invoice_id,
                    "kind": task.kind,
                    "attempts": task.attempts,
                    "now": format_ts(now),
                    "lease_until": format_ts(lease_until),
                },
            )
        return changed == 1

    async def finish_task(self, task: base.DueTask, result: base.TaskResult, *, now: datetime) -> bool:
        stamp = format_ts(now)
        async with self._write() as db:
            changed = await self._exec(
                db,
                "finish_post_settle_task",
                {
                    "invoice_id": task.invoice_id,
                    "kind": task.kind,
                    "attempts": task.attempts + 1,  # the attempt this instance claimed
                    "status": result.status,
                    "last_error": result.last_error,
                    "next_attempt_at": _fmt(result.next_attempt_at),
                    "now": stamp,
                },
            )
            if changed != 1:
                return False
            if result.profile is not None and task.subscription_id is not None:
                profile = result.profile
                await self._exec(
                    db,
                    "store_payment_profile",
                    {
                        "subscription_id": task.subscription_id,
                        "contact_id": profile.contact_id,
                        "profile_id": profile.profile_id,
                        "method": profile.method,
                        "expires_at": profile.expires_at,
                        "now": stamp,
                    },
                )
            if result.audit is not None:
                await self._audit(db, now, [result.audit])
        return True

    # -- instances and reporting --------------------------------------------------------------------------
    async def upsert_instance(self, row: base.InstanceRow) -> None:
        async with self._write() as db:
            await self._exec(db, "upsert_instance", _instance_params(row))

    async def status_report(self, *, now: datetime, max_age: timedelta) -> base.StatusReport:
        min_created = format_ts(now - max_age)
        pending = await self._fetchall("status_pending", {"min_created_at": min_created})
        stale = await self._fetchall("status_stale", {"min_created_at": min_created})
        instances = await self._fetchall("status_instances", {})
        review = await self._fetchall("status_review", {"since": format_ts(now - timedelta(days=30))})
        return base.StatusReport(
            pending=tuple(base.PendingByProvider(r[0], int(r[1]), parse_ts(r[2])) for r in pending),
            no_longer_checked=int(stale[0][0]),
            instances=tuple(_instance(r) for r in instances),
            review=tuple((str(r[0]), int(r[1]), parse_ts(r[2])) for r in review),
        )

    async def invoice_audits(self, invoice_id: str) -> list[dict[str, Any]]:
        rows = await self._fetchall("invoice_audits", {"invoice_id": invoice_id})
        return [
            {
                "occurred_at": r["occurred_at"],
                "action": r["action"],
                "target_kind": r["target_kind"],
                "target_id": r["target_id"],
                "details": json.loads(r["details"]),
            }
            for r in rows
        ]


# SQLite primary result codes that mean "try again later", not "our SQL is wrong".
_UNAVAILABLE_CODES = frozenset({5, 6, 10, 13, 14, 15})  # BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL


def _unavailable(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _UNAVAILABLE_CODES


def _claim_order(invoice: Invoice) -> tuple[str, str]:
    return (format_ts(invoice.created_at), invoice.id)


def _ts(value: Any) -> datetime | None:
    return parse_ts(value) if value is not None else None


def _invoice(row: sqlite3.Row) -> Invoice:
    return Invoice(
        id=row["id"],
        payment_provider_id=row["payment_provider_id"],
        provider_invoice_id=row["provider_invoice_id"],
        product_id=row["product_id"],
        policy_id=row["policy_id"],
        status=InvoiceStatus(row["status"]),
        amount_sats=int(row["amount_sats"]),
        listed_currency=row["listed_currency"],
        listed_value=row["listed_value"],
        buyer_email=row["buyer_email"],
        subscription_id=row["subscription_id"],
        created_at=parse_ts(row["created_at"]),
        settled_at=_ts(row["settled_at"]),
        check_attempts=int(row["check_attempts"]),
        last_provider_status=row["last_provider_status"],
        lease_token=row["lease_token"],
        has_license=bool(row["has_license"]),
    )


def _policy(row: sqlite3.Row) -> Policy:
    return Policy(
        id=row["id"],
        product_id=row["product_id"],
        slug=row["slug"],
        duration_seconds=int(row["duration_seconds"]),
        is_trial=bool(row["is_trial"]),
        is_recurring=bool(row["is_recurring"]),
        trial_days=int(row["trial_days"]),
        renewal_period_days=int(row["renewal_period_days"]),
        grace_seconds=int(row["grace_seconds"]),
        max_machines=int(row["max_machines"]),
        entitlements=tuple(json.loads(row["entitlements"] or "[]")),
        active=bool(row["active"]),
        created_at=row["created_at"],
    )


def _license_params(draft: base.LicenseDraft, invoice: Invoice) -> dict[str, Any]:
    return {
        "id": draft.id,
        "product_id": draft.product_id,
        "policy_id": draft.policy_id,
        "invoice_id": invoice.id,
        "license_key": draft.license_key,
        "issued_at": format_ts(draft.issued_at),
        "expires_at": format_ts(draft.expires_at) if draft.expires_at else None,
        "grace_seconds": draft.grace_seconds,
        "max_machines": draft.max_machines,
        "entitlements": json.dumps(list(draft.entitlements)),
        "is_trial": int(draft.is_trial),
        "buyer_email": draft.buyer_email,
        "metadata": json.dumps({"issued_by": "reconciler"}),
    }


def _subscription_params(
    sub: base.SubscriptionDraft, license_id: str | None, invoice_id: str, stamp: str
) -> dict[str, Any]:
    return {
        "id": sub.id,
        "license_id": license_id,
        "policy_id": sub.policy_id,
        "product_id": sub.product_id,
        "started_at": format_ts(sub.started_at),
        "period_days": sub.period_days,
        "listed_currency": sub.listed_currency,
        "listed_value": sub.listed_value,
        "first_invoice_id": invoice_id,
        "payment_provider_id": sub.payment_provider_id,
        "next_renewal_at": format_ts(sub.next_renewal_at),
        "now": stamp,
    }


def _instance_params(row: base.InstanceRow) -> dict[str, Any]:
    return {
        "lease_owner": row.lease_owner,
        "hostname": row.hostname,
        "pid": row.pid,
        "started_at": format_ts(row.started_at),
        "last_pass_started_at": _fmt(row.last_pass_started_at),
        "last_pass_finished_at": _fmt(row.last_pass_finished_at),
        "last_summary": json.dumps(row.last_summary, sort_keys=True)
        if row.last_summary is not None
        else None,
    }


def _instance(row: sqlite3.Row) -> base.InstanceRow:
    return base.InstanceRow(
        lease_owner=row["lease_owner"],
        hostname=row["hostname"],
        pid=int(row["pid"]),
        started_at=parse_ts(row["started_at"]),
        last_pass_started_at=_ts(row["last_pass_started_at"]),
        last_pass_finished_at=_ts(row["last_pass_finished_at"]),
        last_summary=json.loads(row["last_summary"]) if row["last_summary"] else None,
    )


def _fmt(value: datetime | None) -> str | None:
    return format_ts(value) if value is not None else None


def _raw_status(observation: str | None) -> str | None:
    return observation.split("/", 1)[0] if observation else None


def _with_details(record: base.AuditRecord, extra: dict[str, Any]) -> base.AuditRecord:
    if record.action not in {"invoice.expired", "invoice.invalid", "invoice.paid_late"}:
        return record
    return base.AuditRecord(record.action, record.target_kind, record.target_id, {**record.details, **extra})
