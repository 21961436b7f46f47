"""The webhook intake (docs/webhooks.md §2): a bounded queue of nudged invoices and the workers that take each
through the same lease, fetch, decision and settle transaction as a pass.

The nudge is durable before anything is queued (the invoice is due now in the database), so the queue may
refuse (full) or lose (a crash) an item without losing the invoice: the next pass of any instance takes it.

A worker that finds the invoice leased (docs/webhooks.md §2.1) cannot leave it to that holder: the holder
may have asked the provider before the payment, and its reschedule then overwrites the nudge. So the nudge
waits, off the workers, and is queued again with a doubling delay until it can be claimed, for as long as
the lease it found holds; it is left to the holder only once a newer lease than that one is taken (a claim
made after the nudge was durable, whose fetch comes after the delivery), or when as many nudges wait as the
queue holds. A waiting nudge still counts as unfinished work of the queue (`queue.join()` waits for it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Protocol

from loguru import logger

from reconciler import errors
from reconciler.models import Invoice, InvoiceStatus
from reconciler.runner import Runner
from reconciler.store import base

#: How long a webhook's claim holds the invoice's lease, at most (the pass's own lease when shorter).
WEBHOOK_LEASE = timedelta(minutes=5)
#: A nudge that found its invoice leased is tried again after RETRY_FIRST seconds, the delay doubling up to
#: RETRY_MAX (never past the end of the lease it found).
RETRY_FIRST = 0.05
RETRY_MAX = 1.0


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
    #: the lease a worker first found on the invoice, and how many times the claim was tried (retries only)
    seen: base.InvoiceLease | None = None
    attempts: int = 0


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
        #: nudges waiting for a lease to end before their claim is tried again (at most `size`)
        self.waiting: set[asyncio.Task[None]] = set()
        #: the most nudges that ever waited at once, for tests and the bench
        self.most_waiting = 0
        #: the deliveries of the nudges queued or waiting: a redelivery of one is not queued twice
        self._unfinished: set[tuple[str, str]] = set()

    def offer(self, nudge: Nudge) -> bool:
        """Queue `nudge`; False when the intake is full (the invoice stays due for a pass). A nudge of a
        delivery already queued or waiting (a redelivery) is taken as queued."""
        key = (nudge.provider_id, nudge.idempotency_key)
        if key in self._unfinished:
            return True
        try:
            self.queue.put_nowait(nudge)
        except asyncio.QueueFull:
            return False
        self._unfinished.add(key)
        return True

    async def run(self) -> None:
        """The workers, until cancelled."""
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self.workers):
                    group.create_task(self._worker())
        finally:
            for task in self.waiting:
                task.cancel()

    async def _worker(self) -> None:
        while True:
            nudge = await self.queue.get()
            outcome: str | None = None
            try:
                outcome = await self.apply(nudge)
            except errors.StoreUnavailable as exc:
                logger.warning(
                    "webhook for invoice {}: database unavailable ({}); a pass takes it",
                    nudge.invoice_id,
                    exc.message,
                )
            finally:
                if outcome != "waiting":  # a waiting nudge is finished when its retry is queued
                    self._unfinished.discard((nudge.provider_id, nudge.idempotency_key))
                    self.finished += 1
                    self.queue.task_done()

    async def apply(self, nudge: Nudge) -> str:
        """Claim the invoice and decide it as a pass would; the delivery's outcome (`decided`, `busy`,
        `done_already`), or `waiting` when its claim is tried again later (nothing recorded yet)."""
        runner, store = self.runner, self.store
        lease = min(runner.settings.lease, WEBHOOK_LEASE)
        row = await store.claim_invoice(nudge.invoice_id, owner=runner.owner, now=runner.clock(), lease=lease)
        if row is None:
            return await self._busy(nudge)
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

    async def _busy(self, nudge: Nudge) -> str:
        """Another holder has the invoice's lease: wait for the lease first found to end, unless a newer one
        was taken since (its holder asks the provider after this delivery) or too many nudges wait."""
        now = self.runner.clock()
        holder = await self.store.invoice_lease(nudge.invoice_id, now=now)
        seen = holder if nudge.attempts == 0 else nudge.seen
        newer = holder is not None and (seen is None or holder.token != seen.token)
        if newer or len(self.waiting) >= self.queue.maxsize:
            return await self._finish(nudge, "busy", None)
        delay = min(RETRY_FIRST * 2**nudge.attempts, RETRY_MAX)
        if seen is not None:  # not past the end of the lease found: a crashed holder's ends by itself
            delay = max(min(delay, (seen.until - now).total_seconds()), RETRY_FIRST)
        task = asyncio.create_task(self._retry(replace(nudge, seen=seen, attempts=nudge.attempts + 1), delay))
        self.waiting.add(task)
        self.most_waiting = max(self.most_waiting, len(self.waiting))
        task.add_done_callback(self.waiting.discard)
        return "waiting"

    async def _retry(self, nudge: Nudge, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            await self.queue.put(nudge)  # waits for room: new deliveries meanwhile find the intake full
        finally:
            self.queue.task_done()  # the try it replaces (the queue counts this one now, unless cancelled)

    async def _finish(self, nudge: Nudge, outcome: str, decision: str | None) -> str:
        await self.store.finish_delivery(
            nudge.provider_id,
            nudge.idempotency_key,
            outcome=outcome,
            decision=decision,
            decided_at=self.runner.clock(),
        )
        return outcome
