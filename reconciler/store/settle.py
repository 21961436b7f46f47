"""The settle transaction of docs/reconcile.md §8 (and the recovery of docs/reconcile.md §1): status, license,
subscription, discount redemption, post-settle tasks and audit rows, all or nothing, exactly once per
invoice."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from reconciler import audit, decide, review
from reconciler.models import AuditRecord, Invoice, LicenseDraft, Resolution, SubscriptionDraft
from reconciler.store import base
from reconciler.store.engine import Engine, Tx
from reconciler.store.invoices import payment_params, payment_row
from reconciler.timeutil import format_ts


@dataclass(slots=True)
class _Rows:
    """The audit rows and review resolutions of the settlements of one transaction, written together at its
    end (one statement each, however many settlements share the transaction)."""

    audits: list[tuple[datetime, AuditRecord]] = field(default_factory=list)
    resolves: list[tuple[datetime, str, Resolution, str]] = field(default_factory=list)


class SettleUseCase(Engine):
    async def record_settlement(
        self, invoice: Invoice, settlement: base.Settlement
    ) -> base.SettleOutcome | base.DuplicateFound | None:
        async def settle(tx: Tx) -> base.SettleOutcome | base.DuplicateFound | None:
            rows = _Rows()
            outcome = await self._settle(tx, invoice, settlement, rows)
            await self._write_rows(tx, rows)
            return outcome

        return await self._atomic("record_settlement", settle)

    async def record_settlements(
        self, items: Sequence[tuple[Invoice, base.Settlement]]
    ) -> list[base.SettleOutcome | base.DuplicateFound | None]:
        # Payment locks are taken in one order by every writer, so two groups never wait on each other.
        order = sorted(range(len(items)), key=lambda n: _lock_key(items[n][1]) or "")

        async def settle_all(tx: Tx) -> list[base.SettleOutcome | base.DuplicateFound | None]:
            outcomes: dict[int, base.SettleOutcome | base.DuplicateFound | None] = {}
            rows = _Rows()
            for n in order:
                outcomes[n] = await self._settle(tx, *items[n], rows)
            await self._write_rows(tx, rows)
            return [outcomes[n] for n in range(len(items))]

        return await self._atomic("record_settlements", settle_all)

    async def _write_rows(self, tx: Tx, rows: _Rows) -> None:
        await self._audit_rows(tx, rows.audits)
        await self._resolve_rows(tx, rows.resolves)

    async def _settle(
        self, tx: Tx, invoice: Invoice, settlement: base.Settlement, rows: _Rows
    ) -> base.SettleOutcome | base.DuplicateFound | None:
        now = settlement.now
        stamp = format_ts(now)
        lock = _lock_key(settlement)
        if lock is not None:
            # One payment, one license: under the payment's lock, the rows as they are now decide.
            key = settlement.payment
            assert key is not None
            await tx.returning("lock", {"key": lock})
            found = await tx.returning(
                "payment_rows", payment_params(key.provider_id, key.include_null, [key.provider_invoice_id])
            )
            winner = decide.payment_winner([payment_row(row) for row in found])
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
        audits: list[AuditRecord] = list(settlement.audits)
        license_id: str | None = None
        if settlement.license is not None:
            license_id = await self._license(tx, invoice, settlement, settlement.license, audits)
        elif invoice.subscription_id is not None:
            renewed = await tx.returning(
                "renew_subscription", {"subscription_id": invoice.subscription_id, "now": stamp}
            )
            audits.append(
                audit.subscription_renewed(
                    invoice.id,
                    provider_id=settlement.provider_id,
                    provider_invoice_id=invoice.provider_invoice_id,
                    raw_status=_raw_status(settlement.observation),
                    subscription_id=invoice.subscription_id,
                    found=bool(renewed),
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
                {"invoice_id": invoice.id, "kind": kind, "provider_id": settlement.provider_id, "now": stamp},
            )
        if settlement.actor != "reconciler":  # an operator's settle: the rows it made are theirs
            audits = [a if a.actor != "reconciler" else replace(a, actor=settlement.actor) for a in audits]
        rows.audits.extend((now, a) for a in audits)
        resolves = list(settlement.resolves)
        if license_id is not None and settlement.license is not None:
            issued = any(a.action == audit.Action.LICENSE_ISSUED for a in audits)
            resolves.append(review.license_present(license_id, issued=issued))
        rows.resolves.extend((now, invoice.id, r, settlement.actor) for r in resolves)
        return base.SettleOutcome(license_id=license_id)

    async def _license(
        self,
        tx: Tx,
        invoice: Invoice,
        settlement: base.Settlement,
        draft: LicenseDraft,
        audits: list[AuditRecord],
    ) -> str:
        """Issue the draft unless another writer issued the invoice's license first (then carry on with that
        one), with the subscription of a recurring policy; the id of the invoice's license."""
        issued = bool(await tx.returning("insert_license", _license_params(draft, invoice)))
        if issued:
            license_id = draft.id
        else:
            existing = await tx.returning("license_for_invoice", {"invoice_id": invoice.id})
            license_id = str(existing[0][0])
        subscription_created = False
        if settlement.subscription is not None:
            params = _subscription_params(
                settlement.subscription, license_id, invoice.id, format_ts(settlement.now)
            )
            subscription_created = bool(await tx.returning("insert_subscription", params))
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
        return license_id


def _lock_key(settlement: base.Settlement) -> str | None:
    key = settlement.payment
    return None if key is None else f"{key.provider_id}\x1f{key.provider_invoice_id}"


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


def _raw_status(observation: str | None) -> str | None:
    return observation.split("/", 1)[0] if observation else None
