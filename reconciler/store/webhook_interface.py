"""The part of the store interface (`base.Store`) behind the webhook listener (docs/webhooks.md; implemented in
store/webhooks.py): a delivery recorded with its nudge in one transaction, its outcome, and the pruning."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One accepted delivery as `webhook_deliveries` keeps it (docs/schema.md §3.14)."""

    provider_id: str
    idempotency_key: str
    delivery_id: str
    event_type: str
    provider_invoice_ids: tuple[str, ...]  # the event's invoice reference and its aliases; empty: none
    received_at: datetime
    needs_look: bool


@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    """What recording a delivery did: `duplicate` (its key was recorded already: nothing written; `nudged`
    then holds the invoice of that delivery while nothing came of it yet, to be queued again), else the
    invoices it made due now (empty: unknown invoice, or an event that needs no look) and the outcome written."""

    duplicate: bool
    nudged: tuple[str, ...]
    outcome: str


@dataclass(frozen=True, slots=True)
class InvoiceLease:
    """Who holds an invoice's lease: the claim's token and when the lease ends."""

    token: str
    until: datetime


class WebhookStore(abc.ABC):
    @abc.abstractmethod
    async def record_delivery(
        self, delivery: DeliveryRecord, *, default_provider: str | None
    ) -> DeliveryReceipt:
        """In one transaction: insert the delivery (`ON CONFLICT DO NOTHING` on its provider and key) and, when
        it is new and needs a look, make due at `received_at` every invoice of the provider (a row without a
        provider id is `default_provider`'s) whose `provider_invoice_id` is one of the ids and that a pass
        would still look at (open, or settled without its license); leases are left alone. Outcomes:
        `nudged`, `unknown_invoice`, `ignored`."""

    @abc.abstractmethod
    async def finish_delivery(
        self,
        provider_id: str,
        idempotency_key: str,
        *,
        outcome: str,
        decision: str | None,
        decided_at: datetime,
    ) -> None:
        """Record what became of a nudged delivery: its outcome (`decided`, `busy`, `deferred`), the decision
        kind and when it was committed."""

    @abc.abstractmethod
    async def invoice_lease(self, invoice_id: str, *, now: datetime) -> InvoiceLease | None:
        """The lease on the invoice at `now`; None when nobody holds one (or there is no such invoice). A
        webhook's worker that found the invoice leased waits for this holder (docs/webhooks.md §2.1)."""

    @abc.abstractmethod
    async def prune_deliveries(self, *, received_before: datetime) -> int:
        """Delete the deliveries received before `received_before`; how many."""
