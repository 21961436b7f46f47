"""The reconcile pass's reads and writes of invoices (docs/reconcile.md §1–§7, §11): claim, look up, release,
quarantine, check, expire or invalidate, and what deciding needs to read (payments, policies, licenses)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from reconciler import audit, ids
from reconciler.models import (
    AuditRecord,
    Invoice,
    InvoiceStatus,
    PaymentRow,
    Policy,
    Resolution,
    Unreadable,
    UnreadablePolicy,
)
from reconciler.store import base, rows
from reconciler.store.engine import Engine, Row, Tx, param_json
from reconciler.timeutil import format_ts


class InvoiceUseCases(Engine):
    async def claim(
        self,
        *,
        owner: str,
        pass_start: datetime,
        now: datetime,
        lease: timedelta,
        max_age: timedelta,
        batch_size: int,
        default_provider: str | None = None,
        recovery: Sequence[str] | None = None,
    ) -> list[base.Row]:
        params = _candidates(pass_start, now, max_age, batch_size, default_provider) | {
            "owner": owner,
            "token": ids.new_id(),
            "lease_until": format_ts(now + lease),
        }

        async def claim(tx: Tx) -> list[Row]:
            found = recovery
            if found is None:
                found = [str(r["id"]) for r in await tx.returning("recovery_candidates", params)]
            return await tx.returning("claim", {**params, "recovery": param_json(list(found))})

        found = [rows.invoice(row) for row in await self._atomic("claim", claim)]
        found.sort(key=_claim_order)
        return found

    async def recovery_candidates(
        self,
        *,
        pass_start: datetime,
        now: datetime,
        max_age: timedelta,
        batch_size: int,
        default_provider: str | None = None,
    ) -> list[str]:
        found = await self._read(
            "recovery_candidates", _candidates(pass_start, now, max_age, batch_size, default_provider)
        )
        return [str(row["id"]) for row in found]

    async def peek(
        self,
        *,
        pass_start: datetime,
        now: datetime,
        max_age: timedelta,
        batch_size: int,
        offset: int,
        default_provider: str | None = None,
    ) -> list[base.Row]:
        found = await self._read(
            "peek", _candidates(pass_start, now, max_age, batch_size, default_provider) | {"offset": offset}
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

    async def record_bookkeeping(
        self, checks: Sequence[base.CheckWrite], releases: Sequence[base.ReleaseWrite]
    ) -> set[str]:
        check_rows = [
            {
                "invoice_id": c.invoice.id,
                "token": c.invoice.lease_token,
                "status": c.invoice.status.value,
                "next_check_at": format_ts(c.next_check_at),
                "checked_at": format_ts(c.checked_at) if c.checked_at is not None else None,
                "observation": c.observation,
            }
            for c in checks
        ]
        release_rows = [
            {
                "invoice_id": r.invoice.id,
                "token": r.invoice.lease_token,
                "next_check_at": format_ts(r.next_check_at) if r.next_check_at is not None else None,
            }
            for r in releases
        ]

        async def write(tx: Tx) -> set[str]:
            written: set[str] = set()
            if check_rows:
                found = await tx.returning("record_checks", {"rows": param_json(check_rows)})
                written.update(str(row[0]) for row in found)
                # a check that saw something new may clear review items: only the checks written do
                clearing = [c for c in checks if c.resolves and c.checked_at and c.invoice.id in written]
                if clearing:
                    resolved_at = max(c.checked_at for c in clearing if c.checked_at)
                    await self._resolve(
                        tx, resolved_at, [(c.invoice.id, r) for c in clearing for r in c.resolves]
                    )
            if release_rows:
                found = await tx.returning("release_rows", {"rows": param_json(release_rows)})
                written.update(str(row[0]) for row in found)
            return written

        return await self._atomic("bookkeeping", write)

    async def record_quarantine(
        self,
        row: base.Row,
        *,
        next_check_at: datetime,
        observation: str,
        audits: Sequence[AuditRecord],
        now: datetime,
    ) -> bool:
        params = {
            "invoice_id": row.id,
            "token": row.lease_token,
            "next_check_at": format_ts(next_check_at),
            "observation": observation,
        }
        return await self._fenced_write("quarantine", params, audits=audits, now=now)

    async def payment_rows(self, keys: Sequence[base.PaymentKey]) -> list[PaymentRow]:
        found: list[PaymentRow] = []
        for _, params in payment_lookups(keys):
            found.extend(payment_row(row) for row in await self._read("payment_rows", params))
        return found

    async def record_check(
        self,
        invoice: Invoice,
        *,
        now: datetime,
        next_check_at: datetime,
        observation: str | None,
        audits: Sequence[AuditRecord] = (),
        checked: bool = True,
        resolves: Sequence[Resolution] = (),
    ) -> bool:
        params = {
            "invoice_id": invoice.id,
            "status": invoice.status.value,
            "token": invoice.lease_token,
            "next_check_at": format_ts(next_check_at),
            "checked_at": format_ts(now) if observation is not None and checked else None,
            "observation": observation,
        }
        return await self._fenced_write("record_check", params, audits=audits, now=now, resolves=resolves)

    async def record_transition(
        self,
        invoice: Invoice,
        *,
        new_status: InvoiceStatus,
        now: datetime,
        next_check_at: datetime,
        observation: str | None,
        audits: Sequence[AuditRecord],
        resolves: Sequence[Resolution] = (),
    ) -> bool:
        stamp = format_ts(now)

        async def transition(tx: Tx) -> bool:
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
                return False
            cancelled = await tx.returning("cancel_redemption", {"invoice_id": invoice.id, "now": stamp})
            for row in cancelled:
                await tx.exec("give_back_slot", {"code_id": row[0]})
            await self._audit(tx, now, [audit.with_redemption(a, cancelled=bool(cancelled)) for a in audits])
            await self._resolve(tx, now, [(invoice.id, r) for r in resolves])
            return True

        return await self._atomic("record_transition", transition)

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


def _candidates(
    pass_start: datetime, now: datetime, max_age: timedelta, batch_size: int, default_provider: str | None
) -> dict[str, Any]:
    """The parameters of due_candidates (claim, recovery_candidates, peek)."""
    return {
        "min_created_at": format_ts(pass_start - max_age),
        "pass_start": format_ts(pass_start),
        "now": format_ts(now),
        "batch_size": batch_size,
        "default_provider": default_provider,
    }


def _claim_order(row: base.Row) -> tuple[int, datetime | None, str]:
    if isinstance(row, Unreadable):
        return (0, None, row.label)  # quarantined first: they cost no provider call
    return (1, row.created_at, row.id)


def _release_params(row: base.Row, next_check_at: datetime | None) -> dict[str, Any]:
    return {
        "invoice_id": row.id,
        "token": row.lease_token,
        "next_check_at": format_ts(next_check_at) if next_check_at else None,
    }


def payment_lookups(keys: Sequence[base.PaymentKey]) -> list[tuple[str, dict[str, Any]]]:
    """The `payment_rows` reads that find the rows of `keys`: one per provider (and `include_null`), each as
    (provider id, parameters)."""
    groups: dict[tuple[str, bool], list[str]] = {}
    for key in keys:
        groups.setdefault((key.provider_id, key.include_null), []).append(key.provider_invoice_id)
    return [
        (
            provider_id,
            {
                "provider_id": provider_id,
                "include_null": int(include_null),
                "provider_invoice_ids": param_json(provider_invoice_ids),
            },
        )
        for (provider_id, include_null), provider_invoice_ids in groups.items()
    ]


def payment_row(row: Row) -> PaymentRow:
    created_at = row["created_at"]
    return PaymentRow(
        id=str(row["id"]),
        provider_invoice_id=str(row["provider_invoice_id"]),
        status=str(row["status"]),
        created_at=created_at if isinstance(created_at, str) else "",
        has_license=bool(row["has_license"]),
    )
