"""Provider traffic (SPEC §4.3, §9): per-provider concurrency, request rate, Retry-After pauses that hold the
whole provider, retries with jittered exponential backoff, an outer timeout, and `fetch_many` batching.

Drivers make one attempt per call; everything about how often and how many is decided here, once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from reconciler import errors
from reconciler.driver_api import CommonSettings, Driver, ProviderUnavailable, Snapshot, SupportsFetchMany

Sleep = Callable[[float], Awaitable[None]]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Provider:
    """A configured provider: its id, live driver and the core-owned settings."""

    id: str
    driver: Driver
    common: CommonSettings


_OUTCOMES: dict[type[BaseException], str] = {
    errors.InvoiceNotFound: "not_found",
    errors.BadProviderResponse: "bad_response",
    errors.ProviderAuthError: "auth_error",
    errors.ProviderUnavailable: "unavailable",
}


class ProviderGate:
    """One provider's traffic for one pass: its concurrency, request rate, Retry-After pauses, retries,
    timeouts and batches, plus the state the runner keeps about it (circuit, counts)."""

    def __init__(
        self,
        provider: Provider,
        *,
        sleep: Sleep = asyncio.sleep,
        on_request: Callable[[str, str, float], None] = lambda *_: None,
    ) -> None:
        self.provider = provider
        self.semaphore = asyncio.Semaphore(provider.common.max_concurrency)
        self.sleep = sleep
        self._on_request = on_request
        self.next_slot = 0.0
        self.paused_until = 0.0
        #: set by the runner: credentials refused / told to come back later, for the rest of the pass
        self.circuit_open = False
        self.ended_until: datetime | None = None
        self.fetches = 0
        self.answers = 0
        self.unexpected = 0
        driver = provider.driver
        self.batcher = _Batcher(self, driver) if isinstance(driver, SupportsFetchMany) else None

    async def fetch(self, provider_invoice_id: str) -> Snapshot:
        """One invoice's snapshot under this provider's rules (gathered into a batch when the driver can)."""
        if self.batcher is not None:
            return await self.batcher.fetch(provider_invoice_id)
        snapshot = await self.call(lambda: self.provider.driver.fetch(provider_invoice_id))
        if not isinstance(snapshot, Snapshot):
            raise errors.BadProviderResponse(
                f"{self.provider.id}: the driver returned {type(snapshot).__name__}, not a Snapshot",
                provider_id=self.provider.id,
            )
        return snapshot

    async def call(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """One provider call with the provider's retries, pauses, rate, timeout and metrics."""
        common = self.provider.common

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, ProviderUnavailable) and (
                exc.retry_after is None or exc.retry_after <= common.retry_max_delay
            )

        backoff = wait_random_exponential(multiplier=0.5, max=common.retry_max_delay)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, ProviderUnavailable) and exc.retry_after is not None:
                return 0.0  # the pause below already holds every request of this provider
            return float(backoff(state))

        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(common.retry_attempts),
            wait=wait,
            retry=retry_if_exception(retryable),
            sleep=self.sleep,
            reraise=True,
        ):
            with attempt:
                await self.take_turn()
                try:
                    return await self._call_once(call)
                except ProviderUnavailable as exc:
                    if exc.retry_after is not None:
                        loop = asyncio.get_running_loop()
                        self.paused_until = max(self.paused_until, loop.time() + exc.retry_after)
                    raise
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _call_once(self, call: Callable[[], Awaitable[_T]]) -> _T:
        common = self.provider.common
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = "ok"
        try:
            # Drivers time their own HTTP calls; this outer bound protects the pass from one that does not.
            async with asyncio.timeout(common.timeout * 2 + 1):
                return await call()
        except TimeoutError as exc:
            outcome = "unavailable"
            raise ProviderUnavailable(
                f"{self.provider.id}: no answer within {common.timeout * 2 + 1:.0f}s",
                provider_id=self.provider.id,
            ) from exc
        except BaseException as exc:
            outcome = _OUTCOMES.get(
                type(exc), "unavailable" if isinstance(exc, ProviderUnavailable) else "error"
            )
            raise
        finally:
            self._on_request(self.provider.id, outcome, loop.time() - started)

    async def take_turn(self) -> None:
        """Wait out a provider-wide Retry-After pause and the provider's request rate."""
        loop = asyncio.get_running_loop()
        pause = self.paused_until - loop.time()
        if pause > 0:
            await self.sleep(pause)
        rate = self.provider.common.rate_limit
        if rate > 0:
            now = loop.time()
            slot = max(now, self.next_slot)
            self.next_slot = slot + 1.0 / rate
            if slot > now:
                await self.sleep(slot - now)


class _Batcher:
    """Gathers one provider's fetches into `fetch_many` calls (SPEC §10) for drivers that offer it.

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
