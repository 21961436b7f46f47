"""What the webhook listener writes (docs/webhooks.md §2): a delivery with its nudge, its outcome, pruning."""

from __future__ import annotations

from datetime import datetime

from reconciler.store.engine import Engine, Tx, param_json
from reconciler.store.webhook_interface import DeliveryReceipt, DeliveryRecord, InvoiceLease
from reconciler.timeutil import format_ts, parse_ts


class WebhookUseCases(Engine):
    async def record_delivery(
        self, delivery: DeliveryRecord, *, default_provider: str | None
    ) -> DeliveryReceipt:
        now = format_ts(delivery.received_at)
        ids = delivery.provider_invoice_ids

        async def record(tx: Tx) -> DeliveryReceipt:
            key = {"provider_id": delivery.provider_id, "idempotency_key": delivery.idempotency_key}
            inserted = await tx.returning(
                "insert_webhook_delivery",
                key
                | {
                    "delivery_id": delivery.delivery_id,
                    "event_type": delivery.event_type,
                    "provider_invoice_id": ids[0] if ids else None,
                    "received_at": now,
                    "outcome": "ignored",
                },
            )
            if not inserted:  # a redelivery: queued again only while nothing came of the first
                undecided = await tx.returning("undecided_delivery", key)
                return DeliveryReceipt(True, tuple(str(row["id"]) for row in undecided), "duplicate")
            if not (delivery.needs_look and ids):
                return DeliveryReceipt(False, (), "ignored")
            found = await tx.returning(
                "webhook_invoices",
                {
                    "provider_id": delivery.provider_id,
                    "default_provider": default_provider,
                    "ids": param_json(list(ids)),
                },
            )
            due = [str(row["id"]) for row in found if row["open"]]
            if due:
                await tx.exec("nudge_invoices", {"invoice_ids": param_json(due), "now": now})
            nudged = tuple(due)
            outcome = "nudged" if due else ("done_already" if found else "unknown_invoice")
            first = due[0] if due else (str(found[0]["id"]) if found else None)
            await tx.exec("set_webhook_delivery_invoice", key | {"outcome": outcome, "invoice_id": first})
            return DeliveryReceipt(False, nudged, outcome)

        return await self._atomic("record_delivery", record)

    async def finish_delivery(
        self,
        provider_id: str,
        idempotency_key: str,
        *,
        outcome: str,
        decision: str | None,
        decided_at: datetime,
    ) -> None:
        await self._statement(
            "finish_webhook_delivery",
            {
                "provider_id": provider_id,
                "idempotency_key": idempotency_key,
                "outcome": outcome,
                "decision": decision,
                "decided_at": format_ts(decided_at),
            },
        )

    async def invoice_lease(self, invoice_id: str, *, now: datetime) -> InvoiceLease | None:
        found = await self._read("invoice_lease", {"invoice_id": invoice_id, "now": format_ts(now)})
        if not found:
            return None
        return InvoiceLease(str(found[0]["lease_token"]), parse_ts(str(found[0]["lease_until"])))

    async def prune_deliveries(self, *, received_before: datetime) -> int:
        return await self._statement("prune_webhook_deliveries", {"before": format_ts(received_before)})
