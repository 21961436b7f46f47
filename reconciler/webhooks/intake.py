"""The webhook intake (docs/webhooks.md §2): a bounded queue of nudged invoices and the workers that take each
through the same lease, fetch, decision and settle transaction as a pass.

The nudge is durable before anything is queued (the invoice is due now in the database), so the queue may
refuse (full) or lose (a crash) an item without losing the invoice: the next pass of any instance takes it.
A worker that finds the invoice leased by another instance or pass leaves it to that holder.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from loguru import logger

from reconciler import errors
from reconciler.models import Invoice, InvoiceStatus
from reconciler.runner import Runner

#: How long a webhook's claim holds the invoice's lease, at most (the pass's own lease when shorter).
WEBHOOK_LEASE = timedelta(minutes=5)


class WebhookObserver(Protocol):
    """What the webhook path reports (reconciler/metrics.py's `Metrics` is one)."""

    def webhook(self, provider_id: str, outcome: str) -> None: ...

    def webhook_decided(self, provider_id: str, seconds: float) -> None: ...


class Unobserved:
    """A `WebhookObserver` that reports nothing."""

    def webhook(self, provider_id: str, outcome: str) -> None:
        pass

    def webhook_decided(self, provider_id: str, seconds: float) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Nudge:
    """One invoice a delivery made due, waiting for a worker; `arrived` is the delivery's monotonic time."""

    provider_id: str
    idempotency_key: str
    invoice_id: str
    arrived: float


class Intake:
    """At most `size` nudges waiting; `workers` tasks take them (`run`)."""

    def __init__(
        self,
        runner: Runner,
        *,
        size: int,
        workers: int,
        observer: WebhookObserver | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self.store = runner.store
        self.queue: asyncio.Queue[Nudge] = asyncio.Queue(maxsize=size)
        self.workers = workers
        self.observer: WebhookObserver = observer or Unobserved()
        self.monotonic = monotonic
        #: nudges taken by a worker and finished (decided, busy or failed), for tests and the bench
        self.finished = 0

    def offer(self, nudge: Nudge) -> bool:
        """Queue `nudge`; False when the intake is full (the invoice stays due for a pass)."""
        try:
            self.queue.put_nowait(nudge)
        except asyncio.QueueFull:
            return False
        return True

    async def run(self) -> None:
        """The workers, until cancelled."""
        async with asyncio.TaskGroup() as group:
            for _ in range(self.workers):
                group.create_task(self._worker())

    async def _worker(self) -> None:
        while True:
            nudge = await self.queue.get()
            try:
                await self.apply(nudge)
            except errors.StoreUnavailable as exc:
                logger.warning(
                    "webhook for invoice {}: database unavailable ({}); a pass takes it",
                    nudge.invoice_id,
                    exc.message,
                )
            finally:
                self.finished += 1
                self.queue.task_done()

    async def apply(self, nudge: Nudge) -> str:
        """Claim the invoice and decide it as a pass would; the delivery's outcome (`decided`, `busy`,
        `done_already`)."""
        runner, store = self.runner, self.store
        lease = min(runner.settings.lease, WEBHOOK_LEASE)
        row = await store.claim_invoice(nudge.invoice_id, owner=runner.owner, now=runner.clock(), lease=lease)
        if row is None:  # another instance or pass holds it: the invoice is due now, the holder decides it
            return await self._finish(nudge, "busy", None)
        if (
            isinstance(row, Invoice)
            and row.status is InvoiceStatus.SETTLED
            and (row.has_license or row.subscription_id is not None)
        ):
            await store.release(row, next_check_at=None)
            return await self._finish(nudge, "done_already", None)
        p = runner.one_invoice()
        p.held[row.id] = row
        try:
            verdict = await runner.classify(p, row, runner.clock() + lease, await runner.duplicates([row]))
            kind = await runner.record(p, verdict)
        except BaseException:
            if p.held.pop(row.id, None) is not None:
                await asyncio.shield(store.release(row, next_check_at=None))
            raise
        outcome = await self._finish(nudge, "decided", str(kind))
        self.observer.webhook_decided(nudge.provider_id, self.monotonic() - nudge.arrived)
        return outcome

    async def _finish(self, nudge: Nudge, outcome: str, decision: str | None) -> str:
        await self.store.finish_delivery(
            nudge.provider_id,
            nudge.idempotency_key,
            outcome=outcome,
            decision=decision,
            decided_at=self.runner.clock(),
        )
        return outcome
