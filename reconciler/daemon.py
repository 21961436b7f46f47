"""The long-running loop: initial delay, a pass every interval, graceful stop on SIGTERM / SIGINT.

On a stop signal the loop stops claiming, lets the pass in flight finish within `shutdown_grace`, then cancels
it (the runner releases the leases it still holds) and returns, so the process exits 0.
"""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta

from loguru import logger

from reconciler import errors
from reconciler.runner import Runner


class Daemon:
    def __init__(
        self, runner: Runner, *, interval: timedelta, initial_delay: timedelta, shutdown_grace: timedelta
    ) -> None:
        self.runner = runner
        self.interval = interval.total_seconds()
        self.initial_delay = initial_delay.total_seconds()
        self.grace = shutdown_grace.total_seconds()
        self.stop = asyncio.Event()
        self.passes = 0

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        if not self.stop.is_set():
            logger.info(
                "{} received: finishing in-flight invoices, then stopping", signal.Signals(signum).name
            )
        self.stop.set()

    async def run(self) -> None:
        if await self._sleep(self.initial_delay):
            return
        while not self.stop.is_set():
            await self._one_pass()
            if await self._sleep(self.interval):
                return

    async def _one_pass(self) -> None:
        task = asyncio.create_task(self.runner.run_pass(stop=self.stop))
        stopper = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                done, _ = await asyncio.wait({task}, timeout=self.grace)
                if not done:
                    logger.warning("shutdown grace of {:.0f}s ran out: cancelling the pass", self.grace)
                    task.cancel()
            try:
                summary = await task
            except asyncio.CancelledError:
                if not self.stop.is_set():
                    raise
                return
            except errors.StoreUnavailable as exc:
                logger.error("pass ended: database unavailable: {}; retrying next tick", exc.message)
                return
            self.passes += 1
            log = logger.warning if summary.is_degraded else logger.info
            log(summary.line())
        finally:
            stopper.cancel()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when the stop came."""
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True
