"""The long-running loop: initial delay, a pass every interval, graceful stop on SIGTERM / SIGINT.

On a stop signal the loop stops claiming, lets the pass in flight finish within `shutdown_grace`, then cancels
it (the runner releases the leases it still holds) and returns, so the process exits 0. Under systemd it
reports READY / STATUS / STOPPING and pings the watchdog only while the loop makes progress, so a stuck loop
or a stuck pass gets the service killed and restarted.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta

from loguru import logger

from reconciler import errors
from reconciler.notify import Notifier
from reconciler.runner import PassSummary, Runner

AfterPass = Callable[[PassSummary], Awaitable[None]]
#: provider id -> why its credentials were refused, for every provider still refused (`Metrics.refused`)
Refused = Callable[[], Mapping[str, str]]


def _no_refusals() -> Mapping[str, str]:
    return {}


class Daemon:
    def __init__(
        self,
        runner: Runner,
        *,
        interval: timedelta,
        initial_delay: timedelta,
        shutdown_grace: timedelta,
        stall_after: timedelta = timedelta(minutes=5),
        notifier: Notifier | None = None,
        after_pass: AfterPass | None = None,
        credentials_refused: Refused = _no_refusals,
    ) -> None:
        self.runner = runner
        self.interval = interval.total_seconds()
        self.initial_delay = initial_delay.total_seconds()
        self.grace = shutdown_grace.total_seconds()
        self.stall_after = stall_after.total_seconds()
        self.notifier = notifier or Notifier(None)
        self.after_pass = after_pass
        self.credentials_refused = credentials_refused
        self.stop = asyncio.Event()
        self.passes = 0
        self.last_summary: PassSummary | None = None
        self.in_pass = False

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        if not self.stop.is_set():
            logger.info(
                "{} received: finishing in-flight invoices, then stopping", signal.Signals(signum).name
            )
            self.notifier.stopping()
        self.stop.set()

    def alive(self) -> tuple[bool, str]:
        """Between passes the loop is alive if it runs at all; in a pass, if it made progress lately."""
        if not self.in_pass:
            return True, "idle between passes"
        quiet = asyncio.get_running_loop().time() - self.runner.heartbeat
        if quiet > self.stall_after:
            return False, f"no progress in the current pass for {quiet:.0f}s"
        return True, "in a pass"

    async def ready(self) -> tuple[bool, str]:
        """Can it work? The database holds our schema and no provider's credentials stay refused."""
        problems = []
        try:
            await self.runner.store.require_schema()
        except errors.ReconcilerError as exc:
            problems.append(f"database: {exc.message}")
        refused = self.credentials_refused()
        if refused:
            problems.append(
                "credentials refused: " + ", ".join(f"{p}: {why}" for p, why in sorted(refused.items()))
            )
        if problems:
            return False, "; ".join(problems)
        return True, f"database reachable, {len(self.runner.providers)} driver(s) loaded"

    def _status(self, text: str) -> None:
        """`STATUS=` with the news of the last pass, every refusal still standing, which a pass with
        nothing due for that provider would otherwise hide, and every outage circuit not closed."""
        refused = self.credentials_refused()
        if refused:
            text += "; CREDENTIALS REFUSED(" + ", ".join(f"{p}: {why}" for p, why in sorted(refused.items()))
            text += ")"
        circuits = self.runner.circuits()
        if circuits:
            text += "; PROVIDER UNAVAILABLE(" + ", ".join(f"{p}: {why}" for p, why in circuits.items()) + ")"
        if self.runner.paused:
            text += "; PAUSED(" + ", ".join(self.runner.paused) + ")"
        self.notifier.status(text)

    async def run(self) -> None:
        watchdog = None
        if self.notifier.watchdog_seconds:
            watchdog = asyncio.create_task(self._watchdog(self.notifier.watchdog_seconds / 2))
        try:
            if await self._sleep(self.initial_delay):
                return
            while not self.stop.is_set():
                await self._one_pass()
                if await self._sleep(self.interval):
                    return
        finally:
            if watchdog is not None:
                watchdog.cancel()

    async def _watchdog(self, every: float) -> None:
        while True:
            ok, why = self.alive()
            if ok:
                self.notifier.watchdog()
            else:
                logger.error("watchdog: {}; not pinging systemd", why)
            await asyncio.sleep(every)

    async def _one_pass(self) -> None:
        self.in_pass = True
        self.runner.beat()
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
                self._status(f"database unavailable: {exc.message}")
                return
            self.passes += 1
            self.last_summary = summary
            (logger.warning if summary.is_degraded else logger.info)(summary.line())
            self._status(summary.line())
            if self.after_pass is not None:
                await self.after_pass(summary)
        finally:
            self.in_pass = False
            stopper.cancel()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when the stop came."""
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True
