"""Test helpers shipped for the reconciler's own tests and for driver authors.

`FakeDriver` is a scripted, in-process driver: give it per-invoice outcomes (snapshots or driver errors) and it
answers `fetch` with them, recording every call.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import Any, ClassVar

import aiohttp
from pydantic import BaseModel

from reconciler.driver_api import (
    CommonSettings,
    DriverSettings,
    InvoiceNotFound,
    PostSettleResult,
    PostSettleTask,
    ProviderStatus,
    Snapshot,
)

Outcome = Snapshot | BaseException


class FakeDriverSettings(DriverSettings):
    latency: float = 0.0


def snapshot(status: ProviderStatus | str, raw: str | None = None, **fields: Any) -> Snapshot:
    """A Snapshot with a plausible raw status for `status` (`snapshot("SETTLED", amount_sats=1000)`)."""
    typed = ProviderStatus(status)
    return Snapshot(status=typed, raw_status=raw or typed.value.title(), **fields)


class FakeDriver:
    """A scripted driver. Each invoice id has a queue of outcomes; the last one repeats.

    An id with no script raises `InvoiceNotFound`, like a provider that never saw it.
    """

    Settings: ClassVar[type[BaseModel]] = FakeDriverSettings
    post_settle_kinds: ClassVar[tuple[str, ...]] = ()
    #: keep every fetched id in `calls` (off for long subprocess runs, where nobody reads them)
    record_calls: ClassVar[bool] = True

    def __init__(
        self,
        provider_id: str = "fake",
        settings: Any = None,
        common: CommonSettings | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.provider_id = provider_id
        self.settings = settings if settings is not None else FakeDriverSettings()
        self.common = common or CommonSettings(driver="fake")
        self.latency: float = getattr(self.settings, "latency", 0.0)
        self.calls: list[str] = []
        self.checks = 0
        self.post_settle_calls: list[PostSettleTask] = []
        self.post_settle_results: deque[PostSettleResult | BaseException] = deque()
        self._script: dict[str, deque[Outcome]] = {}

    def script(self, provider_invoice_id: str, *outcomes: Outcome) -> None:
        """Answer `fetch(provider_invoice_id)` with `outcomes` in order, the last one repeating."""
        if not outcomes:
            raise ValueError("give at least one outcome")
        self._script[provider_invoice_id] = deque(outcomes)

    def script_many(self, ids: Iterable[str], *outcomes: Outcome) -> None:
        for provider_invoice_id in ids:
            self.script(provider_invoice_id, *outcomes)

    async def fetch(self, provider_invoice_id: str) -> Snapshot:
        if self.record_calls:
            self.calls.append(provider_invoice_id)
        if self.latency:
            await asyncio.sleep(self.latency)
        queue = self._script.get(provider_invoice_id)
        if not queue:
            raise InvoiceNotFound(
                f"{self.provider_id}: invoice {provider_invoice_id} not found",
                provider_id=self.provider_id,
                invoice_id=provider_invoice_id,
            )
        outcome = queue.popleft() if len(queue) > 1 else queue[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def check(self) -> None:
        self.checks += 1

    async def post_settle(self, task: PostSettleTask) -> PostSettleResult:
        self.post_settle_calls.append(task)
        outcome = self.post_settle_results.popleft()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
