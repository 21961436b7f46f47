"""What an operator's actions write (reconciler/operator/actions.py): one invoice leased on request, a failed
post-settle task re-queued, a provider paused or resumed. Each is one transaction with its audit row, whose
`actor` names the operator."""

from __future__ import annotations

from datetime import datetime, timedelta

from reconciler import ids
from reconciler.models import AuditRecord
from reconciler.store import base, rows
from reconciler.store.engine import Engine, Row, Tx
from reconciler.timeutil import format_ts, parse_ts


class OperatorUseCases(Engine):
    async def claim_invoice(
        self,
        invoice_id: str,
        *,
        owner: str,
        now: datetime,
        lease: timedelta,
        audits: tuple[AuditRecord, ...] = (),
    ) -> base.Row | None:
        params = {
            "invoice_id": invoice_id,
            "owner": owner,
            "token": ids.new_id(),
            "lease_until": format_ts(now + lease),
            "now": format_ts(now),
        }

        async def claim(tx: Tx) -> list[Row]:
            found = await tx.returning("claim_invoice", params)
            if found:
                await self._audit(tx, now, audits)
            return found

        found = await self._atomic("claim_invoice", claim)
        return rows.invoice(found[0]) if found else None

    async def task_status(self, invoice_id: str, kind: str) -> str | None:
        found = await self._read("post_settle_task_status", {"invoice_id": invoice_id, "kind": kind})
        return str(found[0][0]) if found else None

    async def retry_task(
        self, invoice_id: str, kind: str, *, now: datetime, audits: tuple[AuditRecord, ...]
    ) -> bool:
        params = {"invoice_id": invoice_id, "kind": kind, "now": format_ts(now)}

        async def retry(tx: Tx) -> bool:
            if await tx.exec("retry_post_settle_task", params) != 1:
                return False
            await self._audit(tx, now, audits)
            return True

        return await self._atomic("retry_task", retry)

    async def set_paused(
        self,
        provider_id: str,
        paused: bool,
        *,
        actor: str,
        reason: str | None,
        now: datetime,
        audits: tuple[AuditRecord, ...],
    ) -> bool:
        params = {"provider_id": provider_id, "actor": actor, "reason": reason, "now": format_ts(now)}

        async def change(tx: Tx) -> bool:
            if paused:
                changed = len(await tx.returning("pause_provider", params))
            else:
                changed = await tx.exec("resume_provider", params)
            if changed != 1:
                return False
            await self._audit(tx, now, audits)
            return True

        return await self._atomic("pause_provider" if paused else "resume_provider", change)

    async def provider_controls(self) -> list[base.ProviderControl]:
        return [
            base.ProviderControl(
                provider_id=str(r["provider_id"]),
                paused=bool(r["paused"]),
                changed_by=r["changed_by"],
                changed_at=parse_ts(r["changed_at"]) if r["changed_at"] else None,
                reason=r["reason"],
            )
            for r in await self._read("provider_controls", {})
        ]
