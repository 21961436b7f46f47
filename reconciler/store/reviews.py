"""The review worklist's reads and the one write a person's action needs (docs/review.md): list the open items,
get one, close one by compare-and-set. Items are opened and resolved by the reconciler in the transactions
that write their audit rows or clear their conditions (engine.py `_audit`, `_resolve`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from reconciler.models import AuditRecord
from reconciler.store import base, rows
from reconciler.store.engine import Engine, Row, Tx
from reconciler.timeutil import format_ts

#: How a person closes an item, and how the reconciler does.
CLOSED_STATUSES = ("dismissed", "resolved")


class ReviewUseCases(Engine):
    async def open_review_items(
        self, *, limit: int, after: base.ReviewItem | None = None
    ) -> list[base.ReviewItem]:
        found = await self._read(
            "open_review_items",
            {
                "limit": limit,
                "after_id": after.id if after is not None else None,
                "after_opened_at": format_ts(after.opened_at)
                if after is not None and after.opened_at is not None
                else None,
            },
        )
        return [_item(row) for row in found]

    async def review_item(self, item_id: str) -> base.ReviewItem | None:
        found = await self._read("review_item", {"item_id": item_id})
        return _item(found[0]) if found else None

    async def close_review_item(
        self,
        item_id: str,
        *,
        status: str,
        closed_by: str,
        reason: str,
        now: datetime,
        audits: Sequence[AuditRecord] = (),
    ) -> bool:
        if status not in CLOSED_STATUSES:
            raise ValueError(f"a review item is closed as one of {CLOSED_STATUSES}, not {status!r}")
        params = {
            "item_id": item_id,
            "status": status,
            "closed_by": closed_by,
            "reason": reason,
            "now": format_ts(now),
        }
        if not audits:
            return await self._statement("close_review_item", params) == 1

        async def close(tx: Tx) -> bool:
            if await tx.exec("close_review_item", params) != 1:
                return False
            await self._audit(tx, now, audits)
            return True

        return await self._atomic("close_review_item", close)


def _item(row: Row) -> base.ReviewItem:
    details = _details(row["details"])
    provider = details.get("provider_id")
    return base.ReviewItem(
        id=str(row["id"]),
        invoice_id=str(row["invoice_id"]),
        kind=str(row["kind"]),
        opened_at=rows.lenient_ts(row["opened_at"]),
        audit_id=str(row["audit_id"]),
        status=str(row["status"]),
        closed_by=_text(row["closed_by"]),
        closed_at=rows.lenient_ts(row["closed_at"]),
        close_reason=_text(row["close_reason"]),
        provider_id=provider if isinstance(provider, str) else _text(row["payment_provider_id"]),
        provider_invoice_id=_text(row["provider_invoice_id"]),
        details=details,
    )


def _details(value: Any) -> Mapping[str, Any]:
    """The audit row's details: ours, but a report must not fail on one somebody edited."""
    try:
        found = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _text(value: Any) -> str | None:
    """A column the storefront may have filled with anything (in SQLite): text, or shown as `ascii()`."""
    if value is None or isinstance(value, str):
        return value
    return rows.quote(value)
