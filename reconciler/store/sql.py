"""The use cases of the store, written once over named queries; each dialect supplies the SQL file,
its connections and its transactions (`SqliteStore`, `PostgresStore`)."""

from __future__ import annotations

import abc
import json
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any, Protocol

from reconciler import ids
from reconciler.models import Invoice, InvoiceStatus, Policy
from reconciler.store import base
from reconciler.timeutil import format_ts, parse_ts


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


class SqlStore(base.Store):
    @abc.abstractmethod
    def _transaction(self) -> AbstractAsyncContextManager[Tx]:
        """A write transaction: committed when the block ends, rolled back on any exception."""

    @abc.abstractmethod
    async def _read(self, name: str, params: dict[str, Any]) -> list[Row]:
        """Run a read-only named query outside any explicit transaction."""

    @abc.abstractmethod
    async def _write_one(self, name: str, params: dict[str, Any]) -> int:
        """Run one statement as its own transaction (atomic by itself); the number of rows it changed."""

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
        async with self._transaction() as tx:
            rows = await tx.returning("claim", params)
        invoices = [_invoice(row) for row in rows]
        invoices.sort(key=_claim_order)
        return invoices

    async def peek(
        self, *, pass_start: datetime, now: datetime, max_age: timedelta, batch_size: int, offset: int
    ) -> list[Invoice]:
        rows = await self._read(
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
        rows = await self._read("get_invoice", {"invoice_id": invoice_id})
        return _invoice(rows[0]) if rows else None

    async def release(self, invoice: Invoice, *, next_check_at: datetime | None) -> bool:
        changed = await self._write_one(
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
        params = {
            "invoice_id": invoice.id,
            "status": invoice.status.value,
            "token": invoice.lease_token,
            "next_check_at": format_ts(next_check_at),
            "checked_at": format_ts(now) if observation is not None else None,
            "observation": observation,
        }
        if not audits:  # the common case: one fenced UPDATE, no transaction round trips around it
            return await self._write_one("record_check", params) == 1
        async with self._transaction() as tx:
            changed = await tx.exec("record_check", params)
            if changed == 1:
                await self._audit(tx, now, audits)
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
        async with self._transaction() as tx:
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
            extra = {"redemption_cancelled": bool(cancelled)}
            await self._audit(tx, now, [_with_details(a, extra) for a in audits])
        return base.TransitionOutcome(redemption_cancelled=bool(cancelled))

    async def record_settlement(
        self, invoice: Invoice, settlement: base.Settlement
    ) -> base.SettleOutcome | None:
        now = settlement.now
        stamp = format_ts(now)
        async with self._transaction() as tx:
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
                    await tx.returning(
                        "renew_subscription", {"subscription_id": invoice.subscription_id, "now": stamp}
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
            redeemed = await tx.returning(
                "redeem_redemption", {"invoice_id": invoice.id, "license_id": license_id, "now": stamp}
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

    async def policies_for(self, invoice: Invoice) -> tuple[Policy | None, list[Policy]]:
        own = None
        if invoice.policy_id is not None:
            rows = await self._read("invoice_policy", {"policy_id": invoice.policy_id})
            own = _policy(rows[0]) if rows else None
        product = await self._read("product_policies", {"product_id": invoice.product_id})
        return own, [_policy(row) for row in product]

    async def redemption_status(self, invoice_id: str) -> str | None:
        rows = await self._read("redemption_status", {"invoice_id": invoice_id})
        return str(rows[0][0]) if rows else None

    # -- post-settle tasks --------------------------------------------------------------------------------
    async def due_tasks(self, *, now: datetime, batch_size: int) -> list[base.DueTask]:
        rows = await self._read("due_post_settle_tasks", {"now": format_ts(now), "batch_size": batch_size})
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
        async with self._transaction() as tx:
            changed = await tx.exec(
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
        async with self._transaction() as tx:
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

    # -- instances and reporting --------------------------------------------------------------------------
    async def upsert_instance(self, row: base.InstanceRow) -> None:
        async with self._transaction() as tx:
            await tx.exec("upsert_instance", _instance_params(row))
            if row.last_pass_finished_at is not None:
                # one row per process: a timer's `--once` runs would pile up forever without this
                cutoff = row.last_pass_finished_at - base.INSTANCE_RETENTION
                await tx.exec(
                    "prune_instances", {"cutoff": format_ts(cutoff), "lease_owner": row.lease_owner}
                )

    async def status_report(self, *, now: datetime, max_age: timedelta) -> base.StatusReport:
        min_created = format_ts(now - max_age)
        pending = await self._read("status_pending", {"min_created_at": min_created})
        stale = await self._read("status_stale", {"min_created_at": min_created})
        instances = await self._read("status_instances", {})
        review = await self._read("status_review", {"since": format_ts(now - timedelta(days=30))})
        return base.StatusReport(
            pending=tuple(base.PendingByProvider(r[0], int(r[1]), parse_ts(r[2])) for r in pending),
            no_longer_checked=int(stale[0][0]),
            instances=tuple(_instance(r) for r in instances),
            review=tuple((str(r[0]), int(r[1]), parse_ts(r[2])) for r in review),
        )

    async def invoice_audits(self, invoice_id: str) -> list[dict[str, Any]]:
        rows = await self._read("invoice_audits", {"invoice_id": invoice_id})
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


def _claim_order(invoice: Invoice) -> tuple[str, str]:
    return (format_ts(invoice.created_at), invoice.id)


def _ts(value: Any) -> datetime | None:
    return parse_ts(value) if value is not None else None


def _invoice(row: Row) -> Invoice:
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


def _policy(row: Row) -> Policy:
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


def _with_details(record: base.AuditRecord, extra: dict[str, Any]) -> base.AuditRecord:
    if record.action not in {"invoice.expired", "invoice.invalid", "invoice.paid_late"}:
        return record
    return base.AuditRecord(record.action, record.target_kind, record.target_id, {**record.details, **extra})
