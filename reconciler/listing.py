"""Batched reads by creation window for drivers that offer `fetch_page` (docs/reconcile.md §3.1).

A provider whose API lists invoices by creation time, newest first, with skip/take (BTCPay's Greenfield
list) can answer a few hundred due invoices per request where single GETs need one each. The runner
hands the gate each claimed invoice's provider id with its `created_at`; `Lister` gathers the fetches
that wait at once (those that arrived together, when enough for a page; else, like `batching.Batcher`, a
short window, or enough waiting), sorts them by creation time and reads each run of them as one window,
page by page:

- the window is the run's oldest and newest `created_at`, widened by `MARGIN` on both sides (the
  storefront's `created_at` and the provider's creation time differ by seconds; above the newest, by less
  once the pages' creation times showed how closely the provider follows: `margin_above`), and fixed when the
  read starts: invoices created while it pages are newer than its end and cannot shift its pages (and
  one that did would only repeat an item, never hide one: pages are consecutive skips);
- each page resolves the waiting invoices it lists; the other invoices it lists are ignored, never kept
  for a later read (they may be stale by then);
- the read ends when nothing is left waiting, when a page is short (the end of the window), or when a
  page was sparse (fewer than `min_hits` waiting invoices among its items: paging on would cost about as
  many requests as single GETs), unless the page lies above the run (all its items newer than every
  waiting invoice: the margin of a busy store), of which a read pages through a bounded number; a run
  too small for a page to pay is not paged at all;
- whatever the pages did not resolve asks alone, with the single GET of the driver's `fetch`: an
  invoice outside the window (its creation time further off than the margin), archived elsewhere,
  in another store or gone (then it ends not found, as without batching), an item the driver could
  not parse (its single GET says what is wrong with it), and every invoice still waiting when a read
  stops early.

Every page goes through the gate's `call` under its semaphore, like a single GET: request rate,
Retry-After pauses, retries with backoff, the outer timeout and the outage breaker. A page that still
fails after its retries (unavailable, an unreadable answer, a body over the limit, a bug in the driver)
ends its read and its waiting invoices ask alone: nothing about one invoice follows from a page that
could not be read, and the breaker holds the singles back if the provider is down. Only what ends the
provider itself (refused credentials, a Retry-After past `retry_max_delay`, an open outage circuit) is
every waiting invoice's outcome at once. A read stops paging while each waiting invoice still has two
worst fetches of lease left, so its single GET can still run inside the lease.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from loguru import logger

from reconciler.driver_api import (
    PAGE_ITEM_BYTES,
    DriverError,
    Page,
    PageRequest,
    Snapshot,
    SupportsFetchPages,
)

if TYPE_CHECKING:
    from reconciler.traffic import ProviderGate

#: What a waiting fetch is answered: the invoice's Snapshot from a page, or None to ask alone.
Listed = Snapshot | None


@dataclass(slots=True)
class _Waiting:
    created_at: datetime
    lease_until: datetime | None
    futures: list[asyncio.Future[Listed]] = field(default_factory=list)


class Lister:
    """Gathers one provider's fetches into window reads through `fetch_page` (see the module docstring)."""

    #: seconds a fetch waits for company before its run is read
    WINDOW = 0.02
    #: waiting invoices that start a read at once
    MAX_WAITING = 2000
    #: the most invoices one read pages for; more waiting at once are split by creation time
    READ_MAX = 1000
    #: how far the window reaches past the run's oldest and newest `created_at`
    MARGIN = timedelta(seconds=15)
    #: the least it reaches past the newest once the provider's creation times were seen to follow the
    #: storefront's closely (the provider's are whole seconds)
    MARGIN_MIN = timedelta(seconds=2)
    #: invoices a page listed with their creation time before the margin above a run narrows
    SKEW_SAMPLES = 20

    def __init__(self, gate: ProviderGate, driver: SupportsFetchPages) -> None:
        self._gate = gate
        self._driver = driver
        common = gate.provider.common
        item_bytes = getattr(driver, "page_item_bytes", PAGE_ITEM_BYTES)
        #: invoices asked per page: the configured page size, or fewer so that a full page fits the body limit
        self.take = max(1, min(common.page_size, common.max_response_bytes // item_bytes))
        #: a page listing fewer waiting invoices than this is sparse; a smaller run asks alone
        self.min_hits = max(2, self.take // 20)
        self._waiting: dict[str, _Waiting] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._reads: set[asyncio.Task[None]] = set()
        #: the furthest a listed invoice's creation time was seen from its `created_at`, and how many were seen
        self._skew = timedelta(0)
        self._samples = 0

    def margin_above(self) -> timedelta:
        """How far the next read reaches past its newest invoice: `MARGIN` until `SKEW_SAMPLES` listed
        invoices showed how far the provider's creation times stray from the storefront's, then the furthest
        seen plus `MARGIN_MIN` (never more than `MARGIN`). The invoices a busy store created in the margin
        are pages nobody waits for: at 28 invoices a second, 15 s of them cost two pages per read."""
        if self._samples < self.SKEW_SAMPLES:
            return self.MARGIN
        return min(self.MARGIN, self._skew + self.MARGIN_MIN)

    async def fetch(
        self, provider_invoice_id: str, created_at: datetime, lease_until: datetime | None
    ) -> Listed:
        """This invoice's Snapshot from a page, or None: ask alone. Raises what ends the provider."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Listed] = loop.create_future()
        waiting = self._waiting.get(provider_invoice_id)
        if waiting is None:
            waiting = self._waiting[provider_invoice_id] = _Waiting(created_at, lease_until)
        elif lease_until is not None:
            waiting.lease_until = min(waiting.lease_until or lease_until, lease_until)
        waiting.futures.append(future)
        if len(self._waiting) >= self.MAX_WAITING:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.WINDOW, self._flush)
            loop.call_soon(self._arrived_together)
        return await future

    def _arrived_together(self) -> None:
        """Run by the loop once every fetch started with the first one has arrived (a claimed batch: each of
        its invoices reaches its fetch before the loop gets here). A run that is enough for a page to pay is
        read at once rather than after the window; a smaller one waits the window out for company."""
        if self._timer is not None and len(self._waiting) >= self.min_hits:
            self._flush()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        run, self._waiting = self._waiting, {}
        ordered = sorted(run.items(), key=lambda item: item[1].created_at)
        reads = math.ceil(len(ordered) / self.READ_MAX)
        size = math.ceil(len(ordered) / reads) if reads else 0
        for start in range(0, len(ordered), size or 1):
            part = dict(ordered[start : start + size])
            if len(part) < self.min_hits:
                _answer(part, None)  # too few for a page to pay
                continue
            task = asyncio.create_task(self._read(part))
            self._reads.add(task)
            task.add_done_callback(self._reads.discard)

    async def _read(self, pending: dict[str, _Waiting]) -> None:
        gate = self._gate
        newest = max(w.created_at for w in pending.values())
        request = PageRequest(
            created_from=min(w.created_at for w in pending.values()) - self.MARGIN,
            created_to=newest + self.margin_above(),
            skip=0,
            take=self.take,
        )
        leases = [w.lease_until for w in pending.values() if w.lease_until is not None]
        stop_by = min(leases) - timedelta(seconds=2 * gate.provider.common.worst_fetch) if leases else None
        # Pages above the run (the margin's newer invoices) may list none of it; paging through more of
        # them than the run has pages' worth of invoices would cost more than its single GETs.
        above_allowed = len(pending) // self.take + 1
        try:
            while pending and (stop_by is None or gate.clock() < stop_by):
                page = await self._page(request, pending)
                if page is None:
                    return
                hits = self._resolve(page, pending)
                if page.items < request.take:
                    self._missed(pending, newest, request.created_to)
                    return  # the end of the window
                if hits < self.min_hits:
                    oldest = usable_time(page.oldest_created)
                    above = oldest is not None and oldest > newest
                    above_allowed -= 1
                    if not above or above_allowed < 0:
                        return  # a sparse page, or too many pages above the run
                request = PageRequest(
                    request.created_from, request.created_to, request.skip + request.take, request.take
                )
        except asyncio.CancelledError:
            for waiting in pending.values():
                for future in waiting.futures:
                    future.cancel()
            raise
        finally:
            _answer(pending, None)

    async def _page(self, request: PageRequest, pending: dict[str, _Waiting]) -> Page | None:
        """One page through the gate; None when the read must stop (the waiting invoices then ask alone)."""
        gate = self._gate
        provider_id = gate.provider.id
        try:
            async with gate.semaphore:
                page = await gate.call(lambda: self._driver.fetch_page(request))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if gate.ends_provider(exc):
                for waiting in pending.values():
                    for future in waiting.futures:
                        if not future.done():
                            future.set_exception(exc)
                pending.clear()
                return None
            if not isinstance(exc, DriverError):
                gate.driver_bug(exc, f"fetch_page, skip {request.skip}")
            logger.bind(provider_id=provider_id).info(
                "provider {}: list page (skip {}) failed: {}; {} invoice(s) ask alone",
                provider_id,
                request.skip,
                exc.message if isinstance(exc, DriverError) else type(exc).__name__,
                len(pending),
            )
            return None
        if not isinstance(page, Page) or not isinstance(page.answers, Mapping) or not _count(page.items):
            logger.warning(
                "provider {}: fetch_page answered {} (not a Page); {} invoice(s) ask alone",
                provider_id,
                type(page).__name__,
                len(pending),
            )
            return None
        return page

    def _missed(self, pending: Mapping[str, _Waiting], newest: datetime, created_to: datetime) -> None:
        """The whole window was read and some invoices were not on it: one created near the run's newest may
        lie past a narrowed margin at the provider, so the margin widens again until it is learned anew."""
        if created_to - newest >= self.MARGIN:
            return
        if any(newest - w.created_at < self.MARGIN for w in pending.values()):
            self._skew, self._samples = timedelta(0), 0

    def _resolve(self, page: Page, pending: dict[str, _Waiting]) -> int:
        """Answer the waiting invoices `page` lists; how many it listed (sparse pages end the read)."""
        hits = 0
        created = page.created if isinstance(page.created, Mapping) else {}
        for provider_invoice_id, answer in page.answers.items():
            waiting = pending.pop(provider_invoice_id, None) if isinstance(provider_invoice_id, str) else None
            if waiting is None:
                continue  # listed but not waited for (or already answered by an earlier page)
            hits += 1
            at = usable_time(created.get(provider_invoice_id))
            if at is not None:
                self._skew = max(self._skew, abs(at - waiting.created_at))
                self._samples += 1
            # An item the driver could not read asks alone: its single GET says what is wrong with it.
            result = answer if isinstance(answer, Snapshot) else None
            for future in waiting.futures:
                if not future.done():
                    future.set_result(result)
        return hits


def usable_time(value: object) -> datetime | None:
    """A page's `oldest_created` when it is an aware datetime; anything else a driver put there says
    nothing (and never stops a read with a TypeError)."""
    if isinstance(value, datetime) and value.utcoffset() is not None:
        return value
    return None


def _answer(pending: Mapping[str, _Waiting], result: Listed) -> None:
    for waiting in pending.values():
        for future in waiting.futures:
            if not future.done():
                future.set_result(result)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
