"""Batching fetches for drivers that offer `fetch_many` (docs/drivers.md §2): waiting invoices share one
call."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from reconciler import errors
from reconciler.coalesce import Coalescer, Failed
from reconciler.driver_api import Snapshot, SupportsFetchMany

if TYPE_CHECKING:
    from reconciler.traffic import ProviderGate


class Batcher:
    """Gathers one provider's fetches into `fetch_many` calls (docs/drivers.md §2) for drivers that offer it.

    A fetch waits at most `WINDOW` seconds for company, or until `SIZE` fetches are waiting (a
    `coalesce.Coalescer`); each call goes through the provider's semaphore, rate, retries and timeout like
    a single fetch, asking once for an id several fetches wait for. An id the answer leaves out is not
    found; a DriverError in the answer is that invoice's alone; a failed call is every waiting fetch's.
    """

    SIZE = 100
    WINDOW = 0.01

    def __init__(self, gate: ProviderGate, driver: SupportsFetchMany) -> None:
        self._gate = gate
        self._driver = driver
        self._group: Coalescer[str, Snapshot] = Coalescer(self._call, size=self.SIZE, window=self.WINDOW)

    async def fetch(self, provider_invoice_id: str) -> Snapshot:
        return await self._group.submit(provider_invoice_id)

    async def _call(self, batch: list[str]) -> list[Snapshot | Failed]:
        ids = list(dict.fromkeys(batch))
        async with self._gate.semaphore:
            answers = await self._gate.call(lambda: self._driver.fetch_many(ids))
        provider_id = self._gate.provider.id
        if not isinstance(answers, Mapping):
            wrong = f"{provider_id}: fetch_many returned {type(answers).__name__}, not a mapping"
            return [Failed(errors.BadProviderResponse(wrong, provider_id=provider_id)) for _ in batch]
        return [self._answer(answers.get(invoice_id), invoice_id) for invoice_id in batch]

    def _answer(self, answer: object, invoice_id: str) -> Snapshot | Failed:
        provider_id = self._gate.provider.id
        if isinstance(answer, Snapshot):
            return answer
        if isinstance(answer, Exception):
            return Failed(answer)
        if answer is None:
            missing = f"{provider_id}: invoice {invoice_id} not in the batch answer"
            return Failed(errors.InvoiceNotFound(missing, provider_id=provider_id, invoice_id=invoice_id))
        wrong = f"{provider_id}: fetch_many answered {type(answer).__name__} for {invoice_id}"
        return Failed(errors.BadProviderResponse(wrong, provider_id=provider_id, invoice_id=invoice_id))
