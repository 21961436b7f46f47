"""Post-settle tasks (docs/reconcile.md §15): run after the settle committed, in every pass, bounded like
fetches.

Each due task is claimed with an `attempts` compare-and-set (two instances never run one attempt twice),
performed through its provider's gate (the same concurrency, rate, retries, timeout rule and request
metrics as a fetch) and finished done, failed (audited for review) or pending with a later attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from loguru import logger

from reconciler import audit, errors
from reconciler.driver_api import Done, NotApplicable, PostSettleResult, PostSettleTask, SupportsPostSettle
from reconciler.passes import Observer, RunnerSettings
from reconciler.store import base
from reconciler.timeutil import Clock
from reconciler.traffic import Provider, ProviderGate


class PostSettleWorker:
    def __init__(
        self,
        store: base.Store,
        providers: Mapping[str, Provider],
        settings: RunnerSettings,
        *,
        clock: Clock,
        gate: Callable[[Provider], ProviderGate],
        observer: Observer,
        beat: Callable[[], None],
    ) -> None:
        self.store = store
        self.providers = providers
        self.settings = settings
        self.clock = clock
        self._gate = gate
        self.observer = observer
        self._beat = beat

    async def run(self, counts: dict[str, int]) -> None:
        """Run every due task once; each leaves done, failed or with a later `next_attempt_at`. `counts` gets
        one more for each attempt's status."""
        while True:
            due = await self.store.due_tasks(now=self.clock(), batch_size=self.settings.batch_size)
            if not due:
                return
            async with asyncio.TaskGroup() as group:
                for task in due:
                    group.create_task(self._one(task, counts))

    async def _one(self, task: base.DueTask, counts: dict[str, int]) -> None:
        now = self.clock()
        if not await self.store.claim_task(task, now=now, lease_until=now + self.settings.lease):
            return  # another instance took this attempt
        result = await self._attempt(task)
        counts[result.status] = counts.get(result.status, 0) + 1
        self.observer.task(task.provider_id, result.status)
        self._beat()
        await self.store.finish_task(task, result, now=self.clock())

    async def _attempt(self, task: base.DueTask) -> base.TaskResult:
        provider = self.providers.get(task.provider_id) if task.provider_id else None
        driver = provider.driver if provider is not None else None
        if task.has_profile or task.subscription_id is None:
            return base.TaskResult("done")  # idempotent: nothing left to capture
        if (
            provider is None
            or not isinstance(driver, SupportsPostSettle)
            or task.kind not in driver.post_settle_kinds
        ):
            return base.TaskResult("done", last_error="no configured driver performs this task")
        request = PostSettleTask(
            task.invoice_id, task.kind, provider.id, task.provider_invoice_id, task.attempts + 1
        )
        gate = self._gate(provider)
        try:
            # one try per attempt: a task's retries are its own backoff steps, on later passes
            async with gate.semaphore:
                outcome: PostSettleResult = await gate.call(lambda: driver.post_settle(request), attempts=1)
        except errors.DriverError as exc:
            return self._retry_or_fail(task, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # third-party driver code: isolate it, like fetch
            logger.opt(exception=True).error(
                "provider {}: post-settle task {} raised", provider.id, task.kind
            )
            return self._retry_or_fail(task, f"{type(exc).__name__}: {exc}")
        if isinstance(outcome, Done):
            return base.TaskResult("done", profile=outcome.profile)
        if isinstance(outcome, NotApplicable):
            return base.TaskResult("done", last_error=f"not applicable: {outcome.reason}")
        return self._retry_or_fail(task, f"not yet: {outcome.reason}")

    def _retry_or_fail(self, task: base.DueTask, error: str) -> base.TaskResult:
        attempt = task.attempts + 1
        if attempt >= self.settings.post_settle_max_attempts:
            logger.warning(
                "post-settle task {} for invoice {} failed after {} attempts: {}",
                task.kind,
                task.invoice_id,
                attempt,
                error,
            )
            return base.TaskResult(
                "failed",
                last_error=error,
                audit=audit.post_settle_failed(
                    task.invoice_id,
                    provider_id=task.provider_id,
                    provider_invoice_id=task.provider_invoice_id,
                    kind=task.kind,
                    attempts=attempt,
                    error=error,
                ),
            )
        steps = self.settings.post_settle_backoff
        step = steps[min(attempt - 1, len(steps) - 1)]
        return base.TaskResult("pending", next_attempt_at=self.clock() + step, last_error=error)
