"""Provider traffic (docs/reconcile.md §3, §16): per-provider concurrency, request rate, Retry-After pauses
that hold the whole provider, retries with jittered exponential backoff, an outer timeout, batched reads
(`listing.Lister` for `fetch_page`, `batching.Batcher` for `fetch_many`, unless `batch = false`), and the
error policy that turns what a driver raised into one invoice's outcome.

Drivers make one attempt per call; everything about how often and how many is decided here, once. A
`Retry-After` longer than the provider's `retry_max_delay` ends the provider for the pass at once: every
request waiting for a turn, a pause or a retry gives up, and their invoices are rescheduled past it.

A provider's outage breaker (`Breaker`) outlives the pass: the runner keeps one per provider and hands it
to each pass's gate. `breaker_threshold` fetches in a row without an answer (after their retries) open it;
while it is open no request is sent and the invoices are released untouched until its cool-down ends;
then one probe goes alone.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TypeVar

from loguru import logger

from reconciler import batching, driver_api, errors, listing
from reconciler.breaker import Breaker, CircuitOpen, CircuitState, Signal, Ticket, _signal
from reconciler.decide import Answer, BadResponse, NotFound
from reconciler.driver_api import (
    ProviderUnavailable,
    Snapshot,
    SupportsFetchMany,
    SupportsFetchPages,
)
from reconciler.outcomes import (
    _OUTCOMES,
    RELEASE,
    REQUEST_OUTCOMES,
    RETRY_AFTER_MAX,
    Failure,
    Provider,
    Release,
    retry_after_seconds,
)
from reconciler.timeutil import Clock

__all__ = [
    "RELEASE",
    "REQUEST_OUTCOMES",
    "RETRY_AFTER_MAX",
    "_OUTCOMES",
    "Failure",
    "Provider",
    "ProviderGate",
    "Release",
    "Sleep",
    "retry_after_seconds",
]

Sleep = Callable[[float], Awaitable[None]]
_T = TypeVar("_T")


class _Ended(ProviderUnavailable):
    """The provider asked us to come back later than `retry_max_delay`: no more requests this pass."""


class _NotAsked(Exception):
    """A listed invoice that must ask alone, once its turn comes, is not asked after all: `outcome`."""

    def __init__(self, outcome: Failure | Release) -> None:
        super().__init__()
        self.outcome = outcome


class ProviderGate:
    """One provider's traffic for one pass: its concurrency, request rate, Retry-After pauses, retries,
    timeouts and batches, and what the pass learned about it (circuit, counts)."""

    def __init__(
        self,
        provider: Provider,
        *,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        on_request: Callable[[str, str, float], None] = lambda *_: None,
        on_credentials: Callable[[str, str | None], None] = lambda *_: None,
        breaker: Breaker | None = None,
    ) -> None:
        self.provider = provider
        #: the provider's outage breaker: the runner's, which outlives this pass
        self.breaker = breaker or Breaker.for_provider(provider, clock=clock)
        self.semaphore = asyncio.Semaphore(provider.common.max_concurrency)
        self.clock = clock
        self.sleep = sleep
        self._rng = rng or random.Random()
        self._on_request = on_request
        self._on_credentials = on_credentials
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._ended = asyncio.Event()
        #: set (and replaced) each time the breaker opens through this gate: pauses give up at once
        self._opened = asyncio.Event()
        #: credentials refused / told to come back later, for the rest of the pass
        self.circuit_open = False
        self.ended_until: datetime | None = None
        self._fetches = 0
        self._answers = 0
        self._unexpected = 0
        driver, batch = provider.driver, provider.common.batch
        self._lister = (
            listing.Lister(self, driver) if batch and isinstance(driver, SupportsFetchPages) else None
        )
        self._batcher = (
            batching.Batcher(self, driver)
            if batch and self._lister is None and isinstance(driver, SupportsFetchMany)
            else None
        )

    # -- the error policy: one invoice's answer, failure or release ----------------------------------------
    async def ask(
        self,
        provider_invoice_id: str,
        *,
        invoice_id: str,
        lease_until: datetime | None,
        created_at: datetime | None = None,
    ) -> Answer | Failure | Release:
        """Ask about one invoice under this provider's rules; never raises a driver's error. With its
        `created_at`, a listing provider reads it from a page of its creation window."""
        # A batching provider's semaphore bounds its requests, not the invoices waiting for a page or batch.
        if self._batcher is None and self._lister is None:
            async with self.semaphore:
                return await self._ask(provider_invoice_id, invoice_id, lease_until, None)
        return await self._ask(provider_invoice_id, invoice_id, lease_until, created_at)

    async def _ask(
        self,
        provider_invoice_id: str,
        invoice_id: str,
        lease_until: datetime | None,
        created_at: datetime | None,
    ) -> Answer | Failure | Release:
        provider = self.provider
        if self.circuit_open:
            return Failure("credentials refused earlier in this pass")
        if self.ended_until is not None:
            return Failure("the provider asked us to come back later", self.ended_until)
        # A probe in flight is waited for before the lease is checked, like a turn of the semaphore.
        await self.breaker.settled()
        if self.breaker.state is CircuitState.OPEN:
            return self._held_back(self.breaker.refused())
        if self._lease_short(lease_until):
            return RELEASE
        self._fetches += 1
        try:
            answer = await self.fetch(provider_invoice_id, created_at=created_at, lease_until=lease_until)
        except _NotAsked as exc:
            self._fetches -= 1
            return exc.outcome
        except errors.InvoiceNotFound as exc:
            self._answered()
            return NotFound(exc.message)
        except errors.BadProviderResponse as exc:
            return BadResponse(exc.message)
        except errors.ProviderAuthError as exc:
            if not self.circuit_open:
                self.circuit_open = True
                logger.error(
                    "provider {}: credentials refused, skipping it for the rest of this pass: {}",
                    provider.id,
                    exc.message,
                )
                self._on_credentials(provider.id, exc.message)
            return Failure(exc.message)
        except CircuitOpen as exc:
            return self._held_back(exc)
        except _Ended as exc:
            return Failure(exc.message, self.ended_until)
        except errors.ProviderUnavailable as exc:
            logger.bind(invoice_id=invoice_id, provider_id=provider.id).info(
                "provider {}: invoice {} unavailable: {}", provider.id, invoice_id, exc.message
            )
            return Failure(exc.message)
        except errors.DriverError as exc:
            logger.bind(invoice_id=invoice_id, provider_id=provider.id).warning(
                "provider {}: invoice {}: {}", provider.id, invoice_id, exc.message
            )
            return Failure(exc.message)
        except Exception as exc:  # third-party driver code: isolate it (docs/reconcile.md §11), never ours
            self.driver_bug(exc, f"invoice {invoice_id}", invoice_id=invoice_id)
            return Failure(f"the driver raised {type(exc).__name__}")
        self._answered()
        return answer

    def _lease_short(self, lease_until: datetime | None) -> bool:
        worst = timedelta(seconds=self.provider.common.worst_fetch)
        return lease_until is not None and lease_until - self.clock() < worst

    def _held_back(self, exc: CircuitOpen) -> Failure:
        return Failure(exc.message, self.breaker.open_until, circuit_open=True)

    def _answered(self) -> None:
        self._answers += 1
        self._on_credentials(self.provider.id, None)

    def degraded(self) -> str | None:
        """Why this provider degraded the pass (docs/reconcile.md §18), or None."""
        if self.circuit_open:
            return "authentication failed"
        held_back = self.breaker.reason()
        if held_back is not None:
            return held_back
        if self._unexpected:
            return f"driver raised {self._unexpected} unexpected exception(s)"
        if self._fetches and not self._answers:
            return f"none of {self._fetches} fetch(es) got an answer"
        return None

    # -- requests ------------------------------------------------------------------------------------------
    async def fetch(
        self,
        provider_invoice_id: str,
        *,
        created_at: datetime | None = None,
        lease_until: datetime | None = None,
    ) -> Snapshot:
        """One invoice's snapshot under this provider's rules (from a page or a batch when the driver can)."""
        fetch_one = self.provider.driver.fetch
        if self._lister is not None and created_at is not None:
            listed = await self._lister.fetch(provider_invoice_id, created_at, lease_until)
            if listed is None:  # not on a page: ask alone, under the semaphore like any single GET
                async with self.semaphore:  # what _ask checked before the wait, again after it
                    if self.circuit_open:
                        raise _NotAsked(Failure("credentials refused earlier in this pass"))
                    if self._lease_short(lease_until):
                        raise _NotAsked(RELEASE)
                    listed = await self.call(lambda: fetch_one(provider_invoice_id))
            snapshot: object = listed
        elif self._batcher is not None:
            snapshot = await self._batcher.fetch(provider_invoice_id)
        else:
            snapshot = await self.call(lambda: fetch_one(provider_invoice_id))
        return self.checked(snapshot, provider_invoice_id)

    def ends_provider(self, exc: BaseException) -> bool:
        """Whether `exc`, a page's failure, is every waiting invoice's outcome (it ends the provider for now)."""
        return isinstance(exc, errors.ProviderAuthError | CircuitOpen | _Ended)

    def driver_bug(self, exc: BaseException, where: str, *, invoice_id: str | None = None) -> None:
        """Count an unexpected exception from the driver; the first of the pass is logged with its traceback."""
        self._unexpected += 1
        if self._unexpected == 1:
            logger.opt(exception=exc).bind(invoice_id=invoice_id, provider_id=self.provider.id).error(
                "provider {}: the driver raised an unexpected exception ({}); "
                "further ones this pass are counted, not logged",
                self.provider.id,
                where,
            )

    def checked(self, snapshot: object, provider_invoice_id: str) -> Snapshot:
        """A driver's answer as a Snapshot the store can write, or BadProviderResponse."""
        if not isinstance(snapshot, Snapshot):
            raise errors.BadProviderResponse(
                f"{self.provider.id}: the driver returned {type(snapshot).__name__}, not a Snapshot",
                provider_id=self.provider.id,
            )
        return driver_api.check_snapshot(
            snapshot, provider_id=self.provider.id, invoice_id=provider_invoice_id
        )

    async def call(self, call: Callable[[], Awaitable[_T]], *, attempts: int | None = None) -> _T:
        """One provider call with the provider's retries (`attempts` tries, default `retry_attempts`),
        pauses, rate, timeout and metrics."""
        common = self.provider.common
        tries = attempts or common.retry_attempts
        for attempt in range(1, tries + 1):
            await self.take_turn()
            ticket = await self.breaker.admit()
            try:
                return await self._call_once(call, ticket)
            except ProviderUnavailable as exc:
                wait = retry_after_seconds(exc.retry_after)
                if wait is not None and wait > common.retry_max_delay:
                    self._end(wait)
                    self._gave_up(ticket, exc)
                    raise _Ended(
                        f"{exc.message} (asked to come back in {wait:.0f}s)",
                        provider_id=self.provider.id,
                        http_status=exc.http_status,
                    ) from None
                if attempt == tries:
                    self._gave_up(ticket, exc)
                    raise
                if wait is not None:
                    # the pause holds every request of this provider, this one included
                    loop = asyncio.get_running_loop()
                    self._paused_until = max(self._paused_until, loop.time() + wait)
                else:
                    await self._pause(self._backoff(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _backoff(self, attempt: int) -> float:
        """Full jitter over an exponential step: 0.5 s, 1 s, 2 s, ... capped at retry_max_delay."""
        return self._rng.uniform(0, min(self.provider.common.retry_max_delay, 0.5 * 2**attempt))

    def _end(self, seconds: float) -> None:
        until = self.clock() + timedelta(seconds=seconds)
        if self.ended_until is None:
            logger.warning(
                "provider {} asks us to come back in {:.0f}s: done with it for this pass",
                self.provider.id,
                seconds,
            )
        self.ended_until = max(self.ended_until or until, until)
        self._ended.set()

    def _check_ended(self) -> None:
        if self._ended.is_set():
            raise _Ended(
                f"{self.provider.id}: the provider asked us to come back later", provider_id=self.provider.id
            )
        if self.breaker.state is CircuitState.OPEN:
            raise self.breaker.refused()

    async def _call_once(self, call: Callable[[], Awaitable[_T]], ticket: Ticket) -> _T:
        common = self.provider.common
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = "ok"
        signal: Signal = "answered"
        error: str | None = None
        try:
            # Drivers time their own HTTP calls; this outer bound protects the pass from one that does not.
            async with asyncio.timeout(common.timeout * 2 + 1):
                return await call()
        except TimeoutError as exc:
            outcome = signal = "unavailable"
            error = f"{self.provider.id}: no answer within {common.timeout * 2 + 1:.0f}s"
            raise ProviderUnavailable(error, provider_id=self.provider.id) from exc
        except BaseException as exc:
            outcome = _OUTCOMES.get(
                type(exc), "unavailable" if isinstance(exc, ProviderUnavailable) else "error"
            )
            signal = _signal(exc)
            error = exc.message if isinstance(exc, errors.DriverError) else type(exc).__name__
            raise
        finally:
            self._on_request(self.provider.id, outcome, loop.time() - started)
            # A probe speaks for itself; any other unavailable try counts only once its call gives up.
            if ticket.probe or signal != "unavailable":
                self._record(ticket, signal, error)

    def _gave_up(self, ticket: Ticket, exc: ProviderUnavailable) -> None:
        """A call that ends unavailable after its tries counts once toward the outage breaker."""
        if not ticket.probe and _signal(exc) == "unavailable":
            self._record(ticket, "unavailable", exc.message)

    def _record(self, ticket: Ticket, signal: Signal, error: str | None) -> None:
        if self.breaker.record(ticket, signal, error):
            # every request of this provider waiting for a turn, a pause or a retry gives up now
            opened, self._opened = self._opened, asyncio.Event()
            opened.set()

    async def take_turn(self) -> None:
        """Wait out a provider-wide Retry-After pause and the provider's request rate; give up at once when
        the provider has ended for this pass."""
        self._check_ended()
        loop = asyncio.get_running_loop()
        pause = self._paused_until - loop.time()
        if pause > 0:
            await self._pause(pause)
        rate = self.provider.common.rate_limit
        if rate > 0:
            now = loop.time()
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / rate
            if slot > now:
                await self._pause(slot - now)
        self._check_ended()

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the provider ends for this pass or its circuit opens meanwhile (then
        raise)."""
        self._check_ended()
        if seconds <= 0:
            return
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        ender = asyncio.ensure_future(self._ended.wait())
        opened = asyncio.ensure_future(self._opened.wait())
        try:
            await asyncio.wait({sleeper, ender, opened}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            ender.cancel()
            opened.cancel()
        self._check_ended()
