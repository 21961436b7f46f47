"""Issue 12: the claim loop's bookkeeping is O(1) per finished invoice, whatever `batch_size` is.

Counted, not timed: every callback the pass registers on a task's completion. The loop this replaced waited
on all its in-flight tasks with `asyncio.wait(..., FIRST_COMPLETED)`, which registers a callback on every
one of them each time one finishes: O(N × batch_size) in all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

from reconciler.driver_api import CommonSettings
from reconciler.testing import FakeDriver, snapshot
from tests.conftest import RunnerFactory
from tests.support.shop import Shop


class CountingTask(asyncio.Task[Any]):
    registered = 0

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        CountingTask.registered += 1
        super().add_done_callback(fn, context=context)


def counting_factory(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any], **kwargs: Any
) -> asyncio.Task[Any]:
    return CountingTask(coro, loop=loop, **kwargs)


async def callbacks_per_invoice(shop: Shop, make_runner: RunnerFactory, batch_size: int) -> float:
    invoices = 3 * batch_size  # more than one batch: the next claim overlaps the one in flight
    product = shop.product(f"app{batch_size}")
    for i in range(invoices):
        shop.invoice(product, provider_invoice_id=f"B{batch_size}-{i}")
    driver = FakeDriver()
    driver.latency = 0.001  # answers come back one by one, as a real provider's do
    driver.script_many([f"B{batch_size}-{i}" for i in range(invoices)], snapshot("PENDING"))
    runner = make_runner({"fake": driver}, batch_size=batch_size, common=CommonSettings(driver="fake"))
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    CountingTask.registered = 0
    loop.set_task_factory(counting_factory)
    try:
        summary = await runner.run_pass()
    finally:
        loop.set_task_factory(previous)
    assert summary.counts["no_change"] == invoices
    return CountingTask.registered / invoices


async def test_done_callbacks_per_invoice_do_not_grow_with_the_batch(
    shop: Shop, make_runner: RunnerFactory
) -> None:
    small = await callbacks_per_invoice(shop, make_runner, 20)
    large = await callbacks_per_invoice(shop, make_runner, 300)
    # a handful per invoice (its own task, the gate's sleep, the bookkeeping write), however big the batch
    assert small < 8 and large < 8, (small, large)
    assert large < small * 1.5, (small, large)
