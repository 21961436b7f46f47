"""The settle transaction of docs/reconcile.md §8 (and the recovery of docs/reconcile.md §1): status, license,
subscription, discount redemption, post-settle tasks and audit rows, all or nothing, exactly once per
invoice."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from reconciler import audit, decide, review
from reconciler.models import AuditRecord, Invoice, LicenseDraft, Resolution, SubscriptionDraft
from reconciler.store import base
from reconciler.store.engine import Engine, Row, Tx, param_json
from reconciler.store.invoices import payment_lookups, payment_row
from reconciler.timeutil import format_ts


@dataclass(slots=True)
class _Rows:
    """The audit rows and review resolutions of the settlements of one transaction, written together at its
    end (one statement each, however many settlements share the transaction)."""

    audits: list[tuple[datetime, AuditRecord]] = field(default_factory=list)
    resolves: list[tuple[datetime, str, Resolution, str]] = field(default_factory=list)


_Outcome = base.SettleOutcome | base.DuplicateFound | None
#: what `licenses.metadata` holds for a license the reconciler issued
_LICENSE_METADATA = json.dumps({"issued_by": "reconciler"})


class SettleUseCase(Engine):
    async def record_settlement(
        self, invoice: Invoice, settlement: base.Settlement
    ) -> base.SettleOutcome | base.DuplicateFound | None:
        (outcome,) = await self._atomic(
            "record_settlement", lambda tx: self._settle_all(tx, [(invoice, settlement)])
        )
        return outcome

    async def record_settlements(
        self, items: Sequence[tuple[Invoice, base.Settlement]]
    ) -> list[base.SettleOutcome | base.DuplicateFound | None]:
        return await self._atomic("record_settlements", lambda tx: self._settle_all(tx, items))

    async def _settle_all(self, tx: Tx, items: Sequence[tuple[Invoice, base.Settlement]]) -> list[_Outcome]:
        """Every settlement of `items`, each whole, in one transaction with one statement per kind of row.

        The items run in rounds: a round holds at most one item per payment, so what a round reads about its
        payments is what settling them one by one would have read. A payment's second row (its duplicate) is
        in a later round, and sees the first one's writes."""
        # Payment locks are taken in one order by every writer, so two transactions never wait on each other.
        order = sorted(range(len(items)), key=lambda n: _lock_key(items[n][1]) or "")
        rounds: list[list[int]] = []
        seen: dict[str | None, int] = {}
        for n in order:
            key = _lock_key(items[n][1])
            depth = seen.get(key, 0) if key is not None else 0
            if key is not None:
                seen[key] = depth + 1
            if depth == len(rounds):
                rounds.append([])
            rounds[depth].append(n)
        keys = sorted(key for key in seen if key is not None)
        if keys:
            await tx.returning("lock_payments", {"keys": param_json(keys)})
        outcomes: dict[int, _Outcome] = {}
        rows = _Rows()
        for each in rounds:
            outcomes.update(await self._settle_round(tx, [(n, *items[n]) for n in each], rows))
        await self._audit_rows(tx, rows.audits)
        await self._resolve_rows(tx, rows.resolves)
        return [outcomes[n] for n in range(len(items))]

    async def _settle_round(
        self, tx: Tx, items: list[tuple[int, Invoice, base.Settlement]], rows: _Rows
    ) -> dict[int, _Outcome]:
        outcomes: dict[int, _Outcome] = {}
        # 1. One payment, one license: under the payments' locks, the rows as they are now decide.
        winners = await self._payment_winners(tx, [s.payment for _, _, s in items if s.payment is not None])
        going: list[tuple[int, Invoice, base.Settlement]] = []
        for n, invoice, settlement in items:
            key = settlement.payment
            winner = winners.get((key.provider_id, key.provider_invoice_id)) if key is not None else None
            if winner is not None and winner != invoice.id:
                outcomes[n] = base.DuplicateFound(winner)
            else:
                going.append((n, invoice, settlement))
        # 2. The status, compare-and-set on what the claim read: a fenced item writes nothing of its own.
        if going:
            settled = await tx.returning(
                "settle_rows", {"rows": param_json([_settle_row(i, s) for _, i, s in going])}
            )
            done = {str(row[0]) for row in settled}
            for n, invoice, _ in going:
                if invoice.id not in done:
                    outcomes[n] = None
            going = [item for item in going if item[1].id in done]
        # 3. Licenses, unless another writer issued the invoice's first (then carry on with that one).
        drafts = [(i, s.license) for _, i, s in going if s.license is not None]
        licensed: dict[str, str] = {}
        issued: set[str] = set()
        if drafts:
            found = await tx.returning(
                "insert_licenses", {"rows": param_json([_license_params(d, i) for i, d in drafts])}
            )
            issued = {str(row[0]) for row in found}
            licensed = {i.id: d.id for i, d in drafts if i.id in issued}
            others = [i.id for i, _ in drafts if i.id not in issued]
            if others:
                theirs = await tx.returning("licenses_for_invoices", {"invoice_ids": param_json(others)})
                licensed.update((str(row[0]), str(row[1])) for row in theirs)
        # 4. What depends on each one's license: subscription, renewal, audit rows.
        audits: dict[int, list[AuditRecord]] = {}
        for n, invoice, settlement in going:
            audits[n] = await self._license_rows(tx, invoice, settlement, licensed, issued)
        # 5. Discount redemptions, redeemed for the license.
        redeemed: dict[str, list[Row]] = {}
        if going:
            found = await tx.returning(
                "redeem_redemptions",
                {
                    "rows": param_json(
                        [
                            {"invoice_id": i.id, "license_id": licensed.get(i.id), "now": format_ts(s.now)}
                            for _, i, s in going
                        ]
                    )
                },
            )
            for row in found:
                redeemed.setdefault(str(row["invoice_id"]), []).append(row)
        # 6. Post-settle tasks.
        tasks = [
            {"invoice_id": i.id, "kind": kind, "provider_id": s.provider_id, "now": format_ts(s.now)}
            for _, i, s in going
            for kind in s.post_settle_kinds
        ]
        if tasks:
            await tx.exec_many("insert_post_settle_task", tasks)
        for n, invoice, settlement in going:
            license_id = licensed.get(invoice.id) if settlement.license is not None else None
            mine = audits[n]
            for row in redeemed.get(invoice.id, ()):
                mine.append(
                    audit.code_redeemed(
                        str(row["code_id"]),
                        invoice_id=invoice.id,
                        license_id=license_id,
                        redemption_id=row["id"],
                    )
                )
            if settlement.actor != "reconciler":  # an operator's settle: the rows it made are theirs
                mine = [a if a.actor != "reconciler" else replace(a, actor=settlement.actor) for a in mine]
            rows.audits.extend((settlement.now, a) for a in mine)
            resolves = list(settlement.resolves)
            if license_id is not None:
                was_issued = any(a.action == audit.Action.LICENSE_ISSUED for a in mine)
                resolves.append(review.license_present(license_id, issued=was_issued))
            rows.resolves.extend((settlement.now, invoice.id, r, settlement.actor) for r in resolves)
            outcomes[n] = base.SettleOutcome(license_id=license_id)
        return outcomes

    async def _payment_winners(self, tx: Tx, keys: Sequence[base.PaymentKey]) -> dict[tuple[str, str], str]:
        """The id of the row each payment of `keys` settles, as its rows are now (a payment without rows has
        none)."""
        winners: dict[tuple[str, str], str] = {}
        for provider_id, params in payment_lookups(keys):
            found = await tx.returning("payment_rows", params)
            by_payment: dict[str, list[base.PaymentRow]] = {}
            for row in found:
                payment = payment_row(row)
                by_payment.setdefault(payment.provider_invoice_id, []).append(payment)
            for provider_invoice_id, payment_rows in by_payment.items():
                winner = decide.payment_winner(payment_rows)
                if winner is not None:
                    winners[(provider_id, provider_invoice_id)] = winner.id
        return winners

    async def _license_rows(
        self,
        tx: Tx,
        invoice: Invoice,
        settlement: base.Settlement,
        licensed: dict[str, str],
        issued: set[str],
    ) -> list[AuditRecord]:
        """The rows of one settled invoice that hang on its license (a recurring policy's subscription, a
        renewal's), and its audit rows so far."""
        audits: list[AuditRecord] = list(settlement.audits)
        stamp = format_ts(settlement.now)
        draft = settlement.license
        if draft is not None:
            license_id = licensed[invoice.id]
            subscription_created = False
            if settlement.subscription is not None:
                params = _subscription_params(settlement.subscription, license_id, invoice.id, stamp)
                subscription_created = bool(await tx.returning("insert_subscription", params))
            if invoice.id in issued:
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
        return audits


def _settle_row(invoice: Invoice, settlement: base.Settlement) -> dict[str, Any]:
    return {
        "invoice_id": invoice.id,
        "token": invoice.lease_token,
        "status": invoice.status.value,
        "now": format_ts(settlement.now),
        "next_check_at": format_ts(settlement.next_check_at),
        "observation": settlement.observation,
    }


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
        "entitlements": _entitlements_json(draft.entitlements),
        "is_trial": int(draft.is_trial),
        "buyer_email": draft.buyer_email,
        "metadata": _LICENSE_METADATA,
    }


@functools.lru_cache(maxsize=256)
def _entitlements_json(entitlements: tuple[str, ...]) -> str:
    """`licenses.entitlements` as stored: a policy's few entitlement lists, each written once."""
    return json.dumps(list(entitlements))


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
