"""What the operator API reads and its keys (docs/api.md): keyset pages of invoices, open review items and
audit rows; the provider controls; `api_keys` rows, which hold only the SHA-256 of a token.

Rows come back as stored, JSON-ready (text timestamps, `details` decoded): the API shows what is in the
database, a row a pass would quarantine included."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from reconciler.models import AuditRecord
from reconciler.store import base
from reconciler.store.engine import Engine, Row, Tx
from reconciler.store.reporting import _instance
from reconciler.timeutil import format_ts


class ApiUseCases(Engine):
    # -- keys -----------------------------------------------------------------------------------------------
    async def insert_api_key(
        self,
        *,
        key_id: str,
        label: str,
        token_hash: str,
        role: str,
        now: datetime,
        audits: Sequence[AuditRecord] = (),
    ) -> None:
        params = {"id": key_id, "label": label, "token_hash": token_hash, "role": role, "now": format_ts(now)}

        async def insert(tx: Tx) -> None:
            await tx.exec("insert_api_key", params)
            await self._audit(tx, now, audits)

        await self._atomic("insert_api_key", insert)

    async def api_key_by_hash(self, token_hash: str) -> base.ApiKeyRow | None:
        found = await self._read("api_key_by_hash", {"token_hash": token_hash})
        return _key(found[0]) if found else None

    async def api_key(self, key_id: str) -> base.ApiKeyRow | None:
        found = await self._read("api_key", {"id": key_id})
        return _key(found[0]) if found else None

    async def api_keys(self) -> list[base.ApiKeyRow]:
        return [_key(r) for r in await self._read("api_keys", {})]

    async def revoke_api_key(self, key_id: str, *, now: datetime, audits: Sequence[AuditRecord] = ()) -> bool:
        async def revoke(tx: Tx) -> bool:
            if await tx.exec("revoke_api_key", {"id": key_id, "now": format_ts(now)}) != 1:
                return False
            await self._audit(tx, now, audits)
            return True

        return await self._atomic("revoke_api_key", revoke)

    async def touch_api_key(self, key_id: str, *, now: datetime, stale_before: datetime) -> bool:
        params = {"id": key_id, "now": format_ts(now), "stale_before": format_ts(stale_before)}
        return await self._statement("touch_api_key", params) == 1

    # -- pages ----------------------------------------------------------------------------------------------
    async def api_invoices(self, where: base.InvoiceFilter, page: base.PageRequest) -> list[dict[str, Any]]:
        params = {
            "status": where.status,
            "provider_id": where.provider_id,
            "created_before": where.created_before,
            "created_after": where.created_after,
            **_after(page, "after_created"),
            "limit": page.limit,
        }
        return [_invoice(r) for r in await self._read("api_invoices", params)]

    async def api_invoice(self, invoice_id: str) -> dict[str, Any] | None:
        found = await self._read("api_invoice", {"id": invoice_id})
        return _invoice(found[0]) if found else None

    async def api_open_reviews(self, kind: str | None, page: base.PageRequest) -> list[dict[str, Any]]:
        params = {"kind": kind, **_after(page, "after_opened"), "limit": page.limit}
        return [
            {
                "id": r["id"],
                "invoice_id": r["invoice_id"],
                "kind": r["kind"],
                "opened_at": r["opened_at"],
                "audit_id": r["audit_id"],
                "provider_id": r["payment_provider_id"],
                "invoice_status": r["invoice_status"],
            }
            for r in await self._read("api_open_reviews", params)
        ]

    async def api_target_audits(
        self, target_kind: str, target_id: str, page: base.PageRequest
    ) -> list[dict[str, Any]]:
        params = {
            "target_kind": target_kind,
            "target_id": target_id,
            **_after(page, "after_occurred"),
            "limit": page.limit,
        }
        return [
            {
                "id": r["id"],
                "occurred_at": r["occurred_at"],
                "actor": r["actor"],
                "action": r["action"],
                "target_kind": r["target_kind"],
                "target_id": r["target_id"],
                "details": _details(r["details"]),
            }
            for r in await self._read("api_target_audits", params)
        ]

    async def api_provider_controls(self) -> dict[str, dict[str, Any]]:
        return {
            r["provider_id"]: {
                "paused": bool(r["paused"]),
                "changed_by": r["changed_by"],
                "changed_at": r["changed_at"],
                "reason": r["reason"],
            }
            for r in await self._read("api_provider_controls", {})
        }

    async def api_instances(self) -> list[base.InstanceRow]:
        return [_instance(r) for r in await self._read("status_instances", {"since": None})]


def _after(page: base.PageRequest, name: str) -> dict[str, str | None]:
    stamp, row_id = page.after if page.after is not None else (None, None)
    return {name: stamp, "after_id": row_id}


def _key(row: Row) -> base.ApiKeyRow:
    return base.ApiKeyRow(
        id=row["id"],
        label=row["label"],
        token_hash=row["token_hash"],
        role=row["role"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


def _invoice(row: Row) -> dict[str, Any]:
    fields = (
        "id",
        "payment_provider_id",
        "provider_invoice_id",
        "product_id",
        "policy_id",
        "status",
        "amount_sats",
        "listed_currency",
        "listed_value",
        "subscription_id",
        "created_at",
        "settled_at",
        "next_check_at",
        "check_attempts",
        "last_checked_at",
        "last_provider_status",
    )
    data = {field: row[field] for field in fields}
    data["has_license"] = bool(row["has_license"])
    return data


def _details(text: Any) -> Any:
    """An audit row's details: JSON as the reconciler writes it; text another writer left is shown as is."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return {"unparsed": str(text)}
