"""Webhook ingress (docs/webhooks.md): the listener (server.py) and the bounded intake whose workers take a
nudged invoice through the pass's own lease, fetch, decision and settle transaction (intake.py).
`WebhookService` puts them together for `reconciler run`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from reconciler import errors
from reconciler.config import WebhookSettings
from reconciler.passes import Observer
from reconciler.runner import Provider, Runner, RunnerSettings
from reconciler.store import base
from reconciler.timeutil import Clock, utcnow
from reconciler.webhooks.intake import Intake, Nudge, WebhookObserver
from reconciler.webhooks.server import PRUNE_EVERY, PRUNE_FIRST, RETENTION, WebhookServer

__all__ = ["RETENTION", "Intake", "Nudge", "WebhookObserver", "WebhookServer", "WebhookService"]


class WebhookService:
    """The listener, its intake's workers and the hourly pruning, started and stopped together.

    The workers run their own `Runner` over the daemon's store and providers (as the operator's actions do),
    so a webhook never touches the state of the pass in flight; every write goes through the same leases and
    fencing as a pass."""

    def __init__(
        self,
        settings: WebhookSettings,
        store: base.Store,
        providers: Mapping[str, Provider],
        runner_settings: RunnerSettings,
        *,
        signing_key: Ed25519PrivateKey | None,
        observer: WebhookObserver | None = None,
        decisions: Observer | None = None,
        clock: Clock = utcnow,
        owner: str | None = None,
    ) -> None:
        self.runner = Runner(
            store,
            asking_alone(providers),
            runner_settings,
            signing_key=signing_key,
            clock=clock,
            owner=owner,
            observer=decisions,
        )
        self.intake = Intake(self.runner, size=settings.intake, workers=settings.workers, observer=observer)
        self.server = WebhookServer(
            store,
            providers,
            self.intake,
            host=settings.host,
            port=settings.port,
            retry_after=settings.retry_after,
            default_provider=runner_settings.default_provider,
            clock=clock,
            observer=observer,
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        """Listen and start the workers; the bound port."""
        port = await self.server.start()
        self._tasks = [asyncio.create_task(self.intake.run()), asyncio.create_task(self._prune_loop())]
        return port

    @property
    def tasks(self) -> tuple[asyncio.Task[None], ...]:
        """The workers' and the pruning's tasks, while started."""
        return tuple(self._tasks)

    def failed(self) -> BaseException | None:
        """The exception that ended the workers, if they ended (a bug: the daemon stops and exits 1)."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                return task.exception()
        return None

    async def stop(self) -> None:
        await self.server.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _prune_loop(self) -> None:
        await asyncio.sleep(PRUNE_FIRST)  # not in the rush of a start
        while True:
            try:
                pruned = await self.server.prune()
                if pruned:
                    logger.info("forgot {} webhook deliveries older than {} days", pruned, RETENTION.days)
            except errors.StoreUnavailable as exc:
                logger.warning("webhook deliveries not pruned: {}", exc.message)
            await asyncio.sleep(PRUNE_EVERY)


def asking_alone(providers: Mapping[str, Provider]) -> dict[str, Provider]:
    """The providers as a webhook's worker asks them: one invoice, one request at once. A pass gathers its
    fetches into list pages and batches (docs/reconcile.md §3.1), which waits for company first and pays
    only for many invoices of one creation window; a webhook names one invoice, whenever it was created."""
    return {
        pid: replace(provider, common=provider.common.model_copy(update={"batch": False}))
        for pid, provider in providers.items()
    }
