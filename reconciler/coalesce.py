"""Writes that arrive together, committed together: the invoices in flight hand their rows to a `Coalescer`,
which gives everything that came within `window` seconds (or `size` items, whichever is first) to one call
of its `write` function, and hands each caller its own item's result.

With `in_flight`, at most that many calls run at once: what arrives meanwhile waits for one to end and then
goes together (up to `size` items a call), so groups grow with the load instead of staying a window's
worth. A store's writes queue for its connection (or its pool) anyway: waiting for the call ahead costs
nothing, and fewer, fuller transactions commit once each.

With `company`, a caller says how many others may still hand in an item soon: when none may, what waits goes
at once instead of waiting out the window (the last invoice of a pass, an operator's action on one). The
window can then be long enough for a slow stream of items to fill a group: a transaction and its commit
cost about the same for 5 rows as for 50.

A failure of that one call is every item's failure; the `write` function decides whether a group is worth
trying item by item instead, and gives an item its own failure by returning `Failed` in its place. An
invoice's task waits for its own item's result, so nothing leaves a pass unwritten, and a pass that ends
cancels nothing half-written: a group is one transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

_W = TypeVar("_W")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class Failed:
    """One item's own failure, raised to that item's caller alone."""

    error: Exception


class Coalescer(Generic[_W, _R]):
    def __init__(
        self,
        write: Callable[[list[_W]], Awaitable[Sequence[_R | Failed]]],
        *,
        size: int,
        window: float,
        in_flight: int | None = None,
        company: Callable[[], int] | None = None,
    ) -> None:
        self._write = write
        self.size = max(1, size)
        self.window = window
        self.in_flight = in_flight
        self.company = company
        self._waiting: list[tuple[_W, asyncio.Future[_R]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._writes: set[asyncio.Task[None]] = set()

    async def submit(self, item: _W) -> _R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_R] = loop.create_future()
        self._waiting.append((item, future))
        if len(self._waiting) >= self.size or self._alone():
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window, self._flush)
        return await future

    def hurry(self) -> None:
        """Hand what waits to a call now, without waiting out the window: no more company is coming."""
        if self._timer is not None:
            self._flush()

    def _alone(self) -> bool:
        return self.company is not None and self.company() <= 0

    # Whenever items wait, a timer is set or a call is running whose end flushes them.
    def _busy(self) -> bool:
        return self.in_flight is not None and len(self._writes) >= self.in_flight

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting and not self._busy():
            group, self._waiting = self._waiting[: self.size], self._waiting[self.size :]
            task = asyncio.get_running_loop().create_task(self._run(group))
            self._writes.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._writes.discard(task)
        if self._waiting and self._timer is None:
            self._flush()

    async def _run(self, group: list[tuple[_W, asyncio.Future[_R]]]) -> None:
        try:
            results = await self._write([item for item, _ in group])
            if len(results) != len(group):
                raise AssertionError(f"{len(group)} items written, {len(results)} results")
        except BaseException as exc:  # every item of the group sees the failure
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, future), result in zip(group, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Failed):
                future.set_exception(result.error)
            else:
                future.set_result(result)
