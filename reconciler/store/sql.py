"""The use cases of the store, written once over named queries; each dialect supplies the SQL file,
its connections and its transactions (`SqliteStore`, `PostgresStore`)."""

from __future__ import annotations

import abc
import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from loguru import logger

from reconciler import audit, decide, errors, ids
from reconciler.models import (
    Invoice,
    InvoiceStatus,
    LicenseDraft,
    Policy,
    SubscriptionDraft,
    Unreadable,
    UnreadablePolicy,
)
from reconciler.store import base, queries, rows
from reconciler.timeutil import format_ts, parse_ts

_T = TypeVar("_T")

#: A transaction the database aborted to break a deadlock or a serialization conflict is run again, up to
#: this many times in all, with a short jittered pause between tries (SPEC §9: the store survives contention).
CONTENTION_ATTEMPTS = 5


class Row(Protocol):
    """A result row: sqlite3.Row and asyncpg.Record both read by column name or position."""

    def __getitem__(self, key: str | int, /) -> Any: ...


class Tx(Protocol):
    """One open transaction, speaking named queries."""

    async def exec(self, name: str, params: dict[str, Any]) -> int:
        """Run a statement; the number of rows it changed."""
        ...

    async def returning(self, name: str, params: dict[str, Any]) -> list[Row]:
        """Run a statement and read the rows it returns."""
        ...

    async def exec_many(self, name: str, params: Sequence[dict[str, Any]]) -> None:
        """Run a statement once per parameter set, in as few round trips as the driver allows."""
        ...

    async def script(self, sql: str) -> None:
        """Run a script of statements without parameters (schema.sql)."""
        ...


class SqlStore(base.Store):
    @abc.abstractmethod
    def _transaction(self, what: str) -> AbstractAsyncContextManager[Tx]:
        """A write transaction (`what` names it in errors): committed when the block ends, rolled back on any
        exception."""

    @abc.abstractmethod
    async def _read(self, name: str, params: dict[str, Any]) -> list[Row]:
        """Run a read-only named query outside any explicit transaction."""

    @abc.abstractmethod
    async def _write_one(self, name: str, params: dict[str, Any]) -> int:
        """Run one statement as its own transaction (atomic by itself); the number of rows it changed."""

    async def _atomic(self, what: str, body: Callable[[Tx], Awaitable[_T]]) -> _T:
        """Run `body` in one write transaction; run it again (from the start, in a new transaction) when
        the database aborted it for contention. `body` must only talk to the database."""
        for attempt in range(1, CONTENTION_ATTEMPTS + 1):
            try:
                async with self._transaction(what) as tx:
                    return await body(tx)
            except errors.StoreContention as exc:
                if attempt == CONTENTION_ATTEMPTS:
                    raise
                logger.info("database contention ({}); running the transaction again", exc.message)
                await asyncio.sleep(random.uniform(0.01, 0.05) * attempt)
        raise AssertionError("unreachable")

    async def _statement(self, name: str, params: dict[str, Any]) -> int:
        """`_write_one`, run again on contention like `_atomic`."""
        for attempt in range(1, CONTENTION_ATTEMPTS + 1):
            try:
                return await self._write_one(name, params)
            except errors.StoreContention:
                if attempt == CONTENTION_ATTEMPTS:
                    raise
                await asyncio.sleep(random.uniform(0.01, 0.05) * attempt)
        raise AssertionError("unreachable")

    # -- schema -------------------------------------------------------------------------------------------
    async def schema_version(self) -> int | None:
        tables = {str(row[0]) for row in await self._read("schema_tables", {})}
        versions: list[Any] = []
        if "schema_meta" in tables:
            if ("schema_meta", "version") not in (await self.schema_shape()).columns:
                raise errors.SchemaError(
                    "schema_meta is not ours (it has no version column): "
                    "point database.url at the reconciler's database"
                )
            versions = [row[0] for row in await self._read("schema_version", {})]
        return base.check_schema(tables, versions)

    async def schema_shape(self) -> base.SchemaShape:
        return base.SchemaShape.from_rows(
            await self._read("schema_columns", {}), await self._read("schema_indexes", {})
        )

    async def init_schema(self) -> bool:
        async def create(tx: Tx) -> bool:
            # one init-db at a time; another may have created the schema while we waited
            await tx.returning("lock", {"key": "reconciler init-db"})
            if {str(row[0]) for row in await tx.returning("schema_tables", {})} & base.OUR_TABLES:
                return False
            await tx.script(queries.schema_sql())
            return True

        if await self.schema_version() is None and await self._atomic("init-db", create):
            return True
        await self.require_schema()
        return False

    async def _audit(self, tx: Tx, now: datetime, records: Sequence[base.AuditRecord]) -> None:
        if not records:
            return
        await tx.exec_many(
            "insert_audit",
            [
                {
                    "id": ids.uuid7(now),
                    "occurred_at": format_ts(now),
                    "action": record.action,
                    "target_kind": record.target_kind,
                    "target_id": record.target_id,
                    "details": json.dumps(record.details, sort_keys=True, default=str),
                }
                for record in records
            ],
        )

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
    ) -> list[base.Row]:
        params = {
            "owner": owner,
            "token": ids.new_id(),
            "lease_until": format_ts(now + lease),
            "min_created_at": format_ts(pass_start - max_age),
            "pass_start": format_ts(pass_start),
            "now": format_ts(now),
            "batch_size": batch_size,
        }

        async def claim(tx: Tx) -> list[Row]:
            return await tx.returning("claim", params)

        found = [rows.invoice(row) for row in await self._atomic("claim", claim)]
        found.sort(key=_claim_order)
        return found

    async def peek(
        self, *, pass_start: datetime, now: datetime, max_age: timedelta, batch_size: int, offset: int
    ) -> list[base.Row]:
        found = await self._read(
            "peek",
            {
                "min_created_at": format_ts(pass_start - max_age),
                "pass_start": format_ts(pass_start),
                "now": format_ts(now),
                "batch_size": batch_size,
                "offset": offset,
            },
        )
        return [rows.invoice(row) for row in found]

    async def get_invoice(self, invoice_id: str) -> base.Row | None:
        found = await self._read("get_invoice", {"invoice_id": invoice_id})
        return rows.invoice(found[0]) if found else None

    async def find_invoices(self, provider_invoice_id: str, provider_id: str | None) -> list[base.Row]:
        found = await self._read(
            "find_invoices", {"provider_invoice_id": provider_invoice_id, "provider_id": provider_id}
        )
        return [rows.invoice(row) for row in found]

    async def release(self, invoice: base.Row, *, next_check_at: datetime | None) -> bool:
        return await self._statement("release", _release_params(invoice, next_check_at)) == 1

    async def release_all(self, held: Sequence[base.Row]) -> int:
        if not held:
            return 0

        async def release(tx: Tx) -> int:
            released = 0
            for row in held:
                released += await tx.exec("release", _release_params(row, None))
            return released

        return await self._atomic("release_all", release)

    async def record_quarantine(
        self,
        row: base.Row,
        *,
        next_check_at: datetime,
        observation: str,
        audits: Sequence[base.AuditRecord],
        now: datetime,
    ) -> bool:
        params = {
            "invoice_id": row.id,
            "token": row.lease_token,
            "next_check_at": format_ts(next_check_at),
            "observation": observation,
        }
        if not audits:
            return await self._statement("quarantine", params) == 1

        async def quarantine(tx: Tx) -> bool:
            if await tx.exec("quarantine", params) != 1:
                return False
            await self._audit(tx, now, audits)
            return True

        return await self._atomic("record_quarantine", quarantine)

    async def payment_rows(self, keys: Sequence[base.PaymentKey]) -> list[base.PaymentRow]:
        groups: dict[tuple[str, bool], list[str]] = {}
        for key in keys:
            groups.setdefault((key.provider_id, key.include_null), []).append(key.provider_invoice_id)
        found: list[base.PaymentRow] = []
        for (provider_id, include_null), provider_invoice_ids in groups.items():
            result = await self._read(
                "payment_rows", _payment_params(provider_id, include_null, provider_invoice_ids)
            )
            found.extend(_payment_row(row) for row in result)
        return found

    async def record_check(
        self,
        invoice: Invoice,
        *,
        now: datetime,
        next_check_at: datetime,
        observation: str | None,
        audits: Sequence[base.AuditRecord] = (),
        checked: bool = True,
    ) -> bool:
        params = {
            "invoice_id": invoice.id,
            "status": invoice.status.value,
            "token": invoice.lease_token,
            "next_check_at": format_ts(next_check_at),
            "checked_at": format_ts(now) if observation is not None and checked else None,
            "observation": observation,
        }
        if not audits:  # the common case: one fenced UPDATE, no transaction round trips around it
            return await self._statement("record_check", params) == 1

        async def check(tx: Tx) -> bool:
            if await tx.exec("record_check", params) != 1:
                return False
            await self._audit(tx, now, audits)
            return True

        return await self._atomic("record_check", check)

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

        async def transition(tx: Tx) -> base.TransitionOutcome | None:
            changed = await tx.exec(
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
            cancelled = await tx.returning("cancel_redemption", {"invoice_id": invoice.id, "now": stamp})
            for row in cancelled:
                await tx.exec("give_back_slot", {"code_id": row[0]})
            await self._audit(tx, now, [audit.with_redemption(a, cancelled=bool(cancelled)) for a in audits])
            return base.TransitionOutcome(redemption_cancelled=bool(cancelled))

        return await self._atomic("record_transition", transition)

    async def record_settlement(
        self, invoice: Invoice, settlement: base.Settlement
    ) -> base.SettleOutcome | base.DuplicateFound | None:
        async def settle(tx: Tx) -> base.SettleOutcome | base.DuplicateFound | None:
            return await self._settle(tx, invoice, settlement)

        return await self._atomic("record_settlement", settle)

    async def _settle(
        self, tx: Tx, invoice: Invoice, settlement: base.Settlement
    ) -> base.SettleOutcome | base.DuplicateFound | None:
        now = settlement.now
        stamp = format_ts(now)
        if settlement.payment is not None:
            # One payment, one license: under the payment's lock, the rows as they are now decide.
            key = settlement.payment
            await tx.returning("lock", {"key": f"{key.provider_id}\x1f{key.provider_invoice_id}"})
            found = await tx.returning(
                "payment_rows",
                _payment_params(key.provider_id, key.include_null, [key.provider_invoice_id]),
            )
            winner = decide.payment_winner([_payment_row(row) for row in found])
            if winner is not None and winner.id != invoice.id:
                return base.DuplicateFound(winner.id)
        changed = await tx.exec(
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
            inserted = await tx.returning("insert_license", _license_params(draft, invoice))
            issued = bool(inserted)
            if issued:
                license_id = draft.id
            else:
                existing = await tx.returning("license_for_invoice", {"invoice_id": invoice.id})
                license_id = str(existing[0][0])
            if settlement.subscription is not None:
                sub = settlement.subscription
                created = await tx.returning(
                    "insert_subscription", _subscription_params(sub, license_id, invoice.id, stamp)
                )
                subscription_created = bool(created)
            if issued:
                audits.append(
                    audit.license_issued(
                        draft.id,
                        invoice_id=invoice.id,
                        provider_id=settlement.provider_id,
                        provider_invoice_id=invoice.provider_invoice_id,
                        policy_id=draft.policy_id,
                        recovered=settlement.recovered,
                        subscription_created=subscription_created,
                    )
                )
        elif invoice.subscription_id is not None:
            renewed = bool(
                await tx.returning(
                    "renew_subscription", {"subscription_id": invoice.subscription_id, "now": stamp}
                )
            )
            audits.append(
                audit.subscription_renewed(
                    invoice.id,
                    provider_id=settlement.provider_id,
                    provider_invoice_id=invoice.provider_invoice_id,
                    raw_status=_raw_status(settlement.observation),
                    subscription_id=invoice.subscription_id,
                    found=renewed,
                )
            )
        if any(a.action == audit.Action.INVOICE_PAID_LATE for a in audits):
            # a paid-late settle keeps a cancelled redemption cancelled: the audit says so
            status = await tx.returning("redemption_status", {"invoice_id": invoice.id})
            if status and status[0][0] == "cancelled":
                audits = [audit.with_redemption(a, cancelled=True) for a in audits]
        redeemed = await tx.returning(
            "redeem_redemption", {"invoice_id": invoice.id, "license_id": license_id, "now": stamp}
        )
        for row in redeemed:
            audits.append(
                audit.code_redeemed(
                    str(row["code_id"]), invoice_id=invoice.id, license_id=license_id, redemption_id=row["id"]
                )
            )
        for kind in settlement.post_settle_kinds:
            await tx.exec(
                "insert_post_settle_task",
                {
                    "invoice_id": invoice.id,
                    "kind": kind,
                    "provider_id": settlement.provider_id,
                    "now": stamp,
                },
            )
        await self._audit(tx, now, audits)
        return base.SettleOutcome(
            license_id=license_id,
            license_issued=issued,
            subscription_created=subscription_created,
            redemption_redeemed=bool(redeemed),
            subscription_renewed=renewed,
        )

    async def policies_for(
        self, invoice: Invoice
    ) -> tuple[Policy | UnreadablePolicy | None, list[Policy | UnreadablePolicy]]:
        own: Policy | UnreadablePolicy | None = None
        if invoice.policy_id is not None:
            found = await self._read("invoice_policy", {"policy_id": invoice.policy_id})
            own = rows.policy(found[0]) if found else None
        product = await self._read("product_policies", {"product_id": invoice.product_id})
        return own, [rows.policy(row) for row in product]

    async def license_of(self, invoice_id: str) -> dict[str, Any] | None:
        found = await self._read("license_of", {"invoice_id": invoice_id})
        if not found:
            return None
        row = found[0]
        return {key: row[key] for key in ("id", "status", "issued_at", "expires_at", "policy_id")}

    async def redemption_status(self, invoice_id: str) -> str | None:
        found = await self._read("redemption_status", {"invoice_id": invoice_id})
        return str(found[0][0]) if found else None

    # -- post-settle tasks --------------------------------------------------------------------------------
    async def due_tasks(self, *, now: datetime, batch_size: int) -> list[base.DueTask]:
        found = await self._read("due_post_settle_tasks", {"now": format_ts(now), "batch_size": batch_size})
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
            for r in found
        ]

    async def claim_task(self, task: base.DueTask, *, now: datetime, lease_until: datetime) -> bool:
        params = {
            "invoice_id": task.invoice_id,
            "kind": task.kind,
            "attempts": task.attempts,
            "now": format_ts(now),
            "lease_until": format_ts(lease_until),
        }
        return await self._statement("claim_post_settle_task", params) == 1

    async def finish_task(self, task: base.DueTask, result: base.TaskResult, *, now: datetime) -> bool:
        stamp = format_ts(now)

        async def finish(tx: Tx) -> bool:
            changed = await tx.exec(
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
                await tx.exec(
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
                await self._audit(tx, now, [result.audit])
            return True

        return await self._atomic("finish_task", finish)

    # -- instances and reporting --------------------------------------------------------------------------
    async def upsert_instance(self, row: base.InstanceRow) -> None:
        async def upsert(tx: Tx) -> None:
            await tx.exec("upsert_instance", _instance_params(row))
            if row.last_pass_finished_at is not None:
                # one row per process: a timer's `--once` runs would pile up forever without this
                cutoff = row.last_pass_finished_at - base.INSTANCE_RETENTION
                await tx.exec(
                    "prune_instances", {"cutoff": format_ts(cutoff), "lease_owner": row.lease_owner}
                )

        await self._atomic("upsert_instance", upsert)

    async def status_report(
        self, *, now: datetime, max_age: timedelta, instances_since: datetime | None = None
    ) -> base.StatusReport:
        min_created = format_ts(now - max_age)
        since = _fmt(instances_since)
        pending = await self._read("status_pending", {"min_created_at": min_created})
        stale = await self._read("status_stale", {"min_created_at": min_created})
        instances = await self._read("status_instances", {"since": since})
        others = await self._read("status_other_instances", {"since": since})
        review = await self._read(
            "status_review",
            {"since": format_ts(now - timedelta(days=30)), "actions": json.dumps(list(audit.REVIEW_ACTIONS))},
        )
        held = await self._read("status_quarantined", {"limit": base.QUARANTINE_LISTED})
        held_total = await self._read("status_quarantined_count", {})
        return base.StatusReport(
            pending=tuple(base.PendingByProvider(r[0], int(r[1]), rows.lenient_ts(r[2])) for r in pending),
            no_longer_checked=int(stale[0][0]),
            instances=tuple(_instance(r) for r in instances),
            review=tuple((str(r[0]), int(r[1]), parse_ts(r[2])) for r in review),
            quarantined=tuple(_quarantined(r) for r in held),
            quarantined_total=int(held_total[0][0]),
            other_instances=int(others[0][0]),
        )

    async def invoice_audits(self, invoice_id: str) -> list[dict[str, Any]]:
        found = await self._read("invoice_audits", {"invoice_id": invoice_id})
        return [
            {
                "occurred_at": r["occurred_at"],
                "action": r["action"],
                "target_kind": r["target_kind"],
                "target_id": r["target_id"],
                "details": json.loads(r["details"]),
            }
            for r in found
        ]


def _claim_order(row: base.Row) -> tuple[str, str]:
    if isinstance(row, Unreadable):
        return ("", row.label)  # quarantined first: they cost no provider call
    return (format_ts(row.created_at), row.id)


def _ts(value: Any) -> datetime | None:
    return parse_ts(value) if value is not None else None


def _release_params(row: base.Row, next_check_at: datetime | None) -> dict[str, Any]:
    return {
        "invoice_id": row.id,
        "token": row.lease_token,
        "next_check_at": format_ts(next_check_at) if next_check_at else None,
    }


def _payment_params(
    provider_id: str, include_null: bool, provider_invoice_ids: Sequence[str]
) -> dict[str, Any]:
    return {
        "provider_id": provider_id,
        "include_null": int(include_null),
        "provider_invoice_ids": json.dumps(list(provider_invoice_ids)),
    }


def _payment_row(row: Row) -> base.PaymentRow:
    created_at = row["created_at"]
    return base.PaymentRow(
        id=str(row["id"]),
        provider_invoice_id=str(row["provider_invoice_id"]),
        status=str(row["status"]),
        created_at=created_at if isinstance(created_at, str) else "",
        has_license=bool(row["has_license"]),
    )


def _quarantined(row: Row) -> base.Quarantined:
    observation = str(row["last_provider_status"])
    kind, _, detail = observation.removeprefix("!").partition(":")
    return base.Quarantined(str(row["id"]), kind, detail, rows.lenient_ts(row["since"]))


def _license_params(draft: LicenseDraft, invoice: Invoice) -> dict[str, Any]:
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
    sub: SubscriptionDraft, license_id: str | None, invoice_id: str, stamp: str
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


def _instance(row: Row) -> base.InstanceRow:
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
