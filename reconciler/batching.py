"""Batching fetches for drivers that offer `fetch_many` (docs/drivers.md §2): waiting invoices share one
call."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from reconciler import errors
from reconciler.driver_api import Snapshot, SupportsFetchMany

if TYPE_CHECKING:
    from reconciler.traffic import ProviderGate


class Batcher:
    """Gathers one provider's fetches into `fetch_many` calls (docs/drivers.md §2) for drivers that offer it.

    A fetch waits at most `WINDOW` seconds for company, or until `SIZE` ids are waiting; each call goes
    through the provider's semaphore, rate, retries and timeout like a single fetch. An id the answer
    leaves out is not found; a DriverError in the answer is that invoice's alone.
    """

    SIZE = 100
    WINDOW = 0.01

    def __init__(self, gate: ProviderGate, driver: SupportsFetchMany) -> None:
        self._gate = gate
        self._driver = driver
        self._waiting: dict[str, list[asyncio.Future[Snapshot]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._calls: set[asyncio.Task[None]] = set()

    async def fetch(self, provider_invoice_id: str) -> Snapshot:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Snapshot] = loop.create_future()
        self._waiting.setdefault(provider_invoice_id, []).append(future)
        if len(self._waiting) >= self.SIZE:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.WINDOW, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._waiting = self._waiting, {}
        if batch:
            task = asyncio.create_task(self._call(batch))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _call(self, batch: dict[str, list[asyncio.Future[Snapshot]]]) -> None:
        ids: Sequence[str] = list(batch)
        try:
            async with self._gate.semaphore:
                answers = await self._gate.call(lambda: self._driver.fetch_many(ids))
        except BaseException as exc:  # the whole call failed: every waiting invoice sees the same error
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        provider_id = self._gate.provider.id
        if not isinstance(answers, Mapping):
            answers = {
                invoice_id: errors.BadProviderResponse(
                    f"{provider_id}: fetch_many returned {type(answers).__name__}, not a mapping",
                    provider_id=provider_id,
                )
                for invoice_id in batch
            }
        for invoice_id, futures in batch.items():
            answer = answers.get(invoice_id)
            for future in futures:
                if future.done():
                    continue
                if isinstance(answer, Snapshot):
                    future.set_result(answer)
                elif isinstance(answer, BaseException):
                    future.set_exception(answer)
                elif answer is None:
                    future.set_exception(
                        errors.InvoiceNotFound(
                            f"{provider_id}: invoice {invoice_id} not in the batch answer",
                            provider_id=provider_id,
                            invoice_id=invoice_id,
                        )
                    )
                else:
                    future.set_exception(
                        errors.BadProviderResponse(
                            f"{provider_id}: fetch_many answered {type(answer).__name__} for {invoice_id}",
                            provider_id=provider_id,
                            invoice_id=invoice_id,
                        )
                    )
