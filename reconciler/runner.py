"""The reconcile pass (SPEC §4): claim -> ask (bounded, per provider) -> decide -> apply.

The only code that awaits both the store and the drivers. Decisions are `decide.decide`'s; licenses are
`licenses`'; this module sequences them, bounds provider traffic (concurrency, rate, retries with jittered
backoff honouring Retry-After, a circuit per provider) and accounts for every invoice it claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from reconciler import decide, errors, ids, licenses
from reconciler.decide import Answer, BadResponse, Decision, DecisionKind, NotFound
from reconciler.driver_api import (
    Done,
    NotApplicable,
    PostSettleTask,
    Snapshot,
    SupportsPostSettle,
)
from reconciler.models import AuditRecord, Invoice, InvoiceStatus, Policy
from reconciler.store import base
from reconciler.timeutil import Clock, format_ts, utcnow
from reconciler.traffic import Provider as Provider  # re-exported: part of the runner's interface
from reconciler.traffic import ProviderGate, Sleep

#: Extra counters beside the decision kinds: rows another writer changed first, rows released untouched.
FENCED = "fenced"
RELEASED = "released"


class Observer:
    """Hooks the runner calls as it works (metrics implement them); this base ignores everything."""

    def decision(self, provider_id: str | None, kind: str) -> None:
        """An invoice left the pass with this decision kind."""

    def request(self, provider_id: str, outcome: str, seconds: float) -> None:
        """One provider request (one attempt) ended with this outcome."""

    def task(self, provider_id: str | None, status: str) -> None:
        """A post-settle task attempt ended: done, pending (retry later) or failed."""

    def credentials(self, provider_id: str, refused: str | None) -> None:
        """A provider refused our credentials (`refused` says why), or a later request to it succeeded
        (`None`). Called on every change; the state outlives the pass that saw it."""

    def pass_finished(self, summary: PassSummary, providers: list[str], circuits_open: set[str]) -> None:
        """A pass ended; `circuits_open` holds every provider whose circuit opened in it or whose
        credentials are still refused."""


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """The `[reconcile]` settings a pass needs, plus `default_provider`."""

    max_age: timedelta = timedelta(hours=72)
    batch_size: int = 500
    paid_late: decide.PaidLatePolicy = "flag"
    schedule: tuple[timedelta, ...] = (
        timedelta(minutes=1),
        timedelta(minutes=5),
        timedelta(minutes=15),
        timedelta(minutes=60),
    )
    interval: timedelta = timedelta(seconds=60)
    lease: timedelta = timedelta(minutes=5)
    default_provider: str | None = None
    post_settle_max_attempts: int = 8
    post_settle_backoff: tuple[timedelta, ...] = (
        timedelta(minutes=1),
        timedelta(minutes=5),
        timedelta(minutes=15),
        timedelta(hours=1),
    )


@dataclass
class PassSummary:
    started_at: datetime
    finished_at: datetime | None = None
    claimed: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    by_provider: dict[str, Counter[str]] = field(default_factory=dict)
    degraded: dict[str, str] = field(default_factory=dict)
    tasks: Counter[str] = field(default_factory=Counter)

    def count(self, provider_id: str | None, kind: str) -> None:
        self.counts[kind] += 1
        self.by_provider.setdefault(provider_id or "-", Counter())[kind] += 1

    @property
    def duration(self) -> float:
        end = self.finished_at or self.started_at
        return (end - self.started_at).total_seconds()

    @property
    def is_degraded(self) -> bool:
        return bool(self.degraded)

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_at": format_ts(self.started_at),
            "finished_at": format_ts(self.finished_at) if self.finished_at else None,
            "duration_seconds": round(self.duration, 3),
            "claimed": self.claimed,
            "counts": dict(sorted(self.counts.items())),
            "by_provider": {p: dict(sorted(c.items())) for p, c in sorted(self.by_provider.items())},
            "degraded": dict(sorted(self.degraded.items())),
            "post_settle": dict(sorted(self.tasks.items())),
        }

    def line(self) -> str:
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "nothing due"
        if self.tasks:
            counts += " post_settle(" + " ".join(f"{k}={v}" for k, v in sorted(self.tasks.items())) + ")"
        suffix = (
            f" DEGRADED({', '.join(f'{p}: {r}' for p, r in sorted(self.degraded.items()))})"
            if self.degraded
            else ""
        )
        return f"pass finished in {self.duration:.2f}s: {counts}{suffix}"


@dataclass(frozen=True, slots=True)
class _Failure:
    """A fetch that produced no answer: the invoice stays untouched and is rescheduled."""

    kind: DecisionKind
    not_before: datetime | None = None


_RELEASE = object()  # the lease is too short for a fetch to start: release untouched, claim again


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def instance_owner() -> str:
    """`hostname:pid:random`, the lease owner and `reconciler_instances` key of this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{ids.new_id()[:8]}"


class Runner:
    def __init__(
        self,
        store: base.Store,
        providers: Mapping[str, Provider],
        settings: RunnerSettings,
        *,
        signing_key: Ed25519PrivateKey | None,
        clock: Clock = utcnow,
        owner: str | None = None,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.providers = dict(providers)
        self.settings = settings
        self.signing_key = signing_key
        self.clock = clock
        self.owner = owner or instance_owner()
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.observer = observer or Observer()
        self.started_at = clock()
        #: loop time of the last sign of progress (a claim, an invoice done); read by the watchdog
        self.heartbeat = 0.0
        self._held: dict[str, Invoice] = {}
        self._gates: dict[str, ProviderGate] = {}
        self._warned: set[str] = set()
        self._policies: dict[tuple[str, str | None], tuple[Policy | None, list[Policy]]] = {}
        self._summary = PassSummary(started_at=self.started_at)

    # -- the pass -------------------------------------------------------------------------------------------
    async def run_pass(self, *, stop: asyncio.Event | None = None) -> PassSummary:
        """Claim and settle every due candidate until a claim returns nothing (or `stop` is set)."""
        if self.signing_key is None:
            raise errors.SigningKeyError("a pass that writes needs the license signing key")
        pass_start = self._begin()
        await self.store.upsert_instance(
            base.InstanceRow(self.owner, socket.gethostname(), os.getpid(), self.started_at, pass_start)
        )
        try:
            async with asyncio.TaskGroup() as group:
                await self._claim_and_reconcile(group, pass_start, stop)
            if stop is None or not stop.is_set():
                await self._post_settle_tasks()
        except asyncio.CancelledError:
            await asyncio.shield(self._release_held())
            raise
        except BaseExceptionGroup as group:
            # A store failure ends the pass (the daemon retries next tick): surface it as itself, not
            # wrapped in the task group's ExceptionGroup. Anything else is a bug and stays loud.
            unavailable, others = group.split(errors.StoreUnavailable)
            if unavailable is None or others is not None:
                raise
            raise _first_leaf(unavailable) from group
        summary = self._finish()
        await self.store.upsert_instance(
            base.InstanceRow(
                self.owner,
                socket.gethostname(),
                os.getpid(),
                self.started_at,
                pass_start,
                summary.finished_at,
                summary.to_dict(),
            )
        )
        return summary

    async def _claim_and_reconcile(
        self, group: asyncio.TaskGroup, pass_start: datetime, stop: asyncio.Event | None
    ) -> None:
        """Keep between one and two batches in flight: the next claim overlaps the current provider calls,
        so a slow answer never idles the rest of the batch. A claim that returns nothing ends the pass."""
        in_flight: set[asyncio.Task[None]] = set()
        while stop is None or not stop.is_set():
            if len(in_flight) >= self.settings.batch_size:
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            batch = await self.store.claim(
                owner=self.owner,
                pass_start=pass_start,
                now=self.clock(),
                lease=self.settings.lease,
                max_age=self.settings.max_age,
                batch_size=self.settings.batch_size,
            )
            if not batch:
                return
            self._summary.claimed += len(batch)
            self.beat()
            lease_until = self.clock() + self.settings.lease
            self._held.update((invoice.id, invoice) for invoice in batch)
            for invoice in batch:
                task = group.create_task(self._one(invoice, lease_until))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)

    async def dry_run(
        self, emit: Callable[[dict[str, Any]], None], *, only: str | None = None
    ) -> PassSummary:
        """Every provider read of a pass and no write (SPEC §4.12); `emit` gets one line per decision."""
        pass_start = self._begin()
        if only is not None:
            invoice = await self.store.get_invoice(only)
            if invoice is None:
                raise LookupError(only)
            await self._dry_one(invoice, emit)
        else:
            offset = 0
            while True:
                page = await self.store.peek(
                    pass_start=pass_start,
                    now=self.clock(),
                    max_age=self.settings.max_age,
                    batch_size=self.settings.batch_size,
                    offset=offset,
                )
                if not page:
                    break
                offset += len(page)
                async with asyncio.TaskGroup() as group:
                    for invoice in page:
                        group.create_task(self._dry_one(invoice, emit))
        return self._finish()

    def _begin(self) -> datetime:
        pass_start = self.clock()
        self._summary = PassSummary(started_at=pass_start)
        self._gates = {}
        self._warned = set()
        self._policies = {}  # read once per pass: storefront configuration, not per-invoice state
        return pass_start

    def _finish(self) -> PassSummary:
        summary = self._summary
        summary.finished_at = self.clock()
        for gate in self._gates.values():
            pid = gate.provider.id
            if gate.circuit_open:
                summary.degraded[pid] = "authentication failed"
            elif gate.unexpected:
                summary.degraded[pid] = f"driver raised {gate.unexpected} unexpected exception(s)"
            elif gate.fetches and not gate.answers:
                summary.degraded[pid] = f"none of {gate.fetches} fetch(es) got an answer"
        circuits = {g.provider.id for g in self._gates.values() if g.circuit_open}
        self.observer.pass_finished(summary, sorted(self.providers), circuits)
        self.beat()
        return summary

    def beat(self) -> None:
        """Record progress for the watchdog and /healthz."""
        self.heartbeat = asyncio.get_running_loop().time()

    # -- one invoice ----------------------------------------------------------------------------------------
    async def _one(self, invoice: Invoice, lease_until: datetime) -> None:
        kind, provider_id = await self._reconcile(invoice, lease_until)
        # Only a finished invoice leaves `_held`: a cancelled one is still ours to release on shutdown.
        self._held.pop(invoice.id, None)
        self._summary.count(provider_id, kind)
        self.observer.decision(provider_id, kind)
        self.beat()

    async def _reconcile(self, invoice: Invoice, lease_until: datetime) -> tuple[str, str | None]:
        provider_id = invoice.payment_provider_id or self.settings.default_provider
        if invoice.status is InvoiceStatus.SETTLED:
            provider = self.providers.get(provider_id) if provider_id else None
            return await self._settle(invoice, provider_id, provider, None, recovered=True), provider_id
        provider = self._provider_for(invoice, provider_id)
        if provider is None:
            await self.store.release(invoice, next_check_at=self.clock() + self.settings.interval)
            return DecisionKind.SKIPPED, provider_id
        gate = self._gate(provider)
        answer = await self._ask(gate, invoice, lease_until)
        if answer is _RELEASE:
            await self.store.release(invoice, next_check_at=None)
            return RELEASED, provider.id
        if isinstance(answer, _Failure):
            now = self.clock()
            next_at = self._next_check(invoice, now)
            if answer.not_before is not None:
                next_at = max(next_at, answer.not_before)
            await self.store.release(invoice, next_check_at=next_at)
            return answer.kind, provider.id
        assert isinstance(answer, Snapshot | NotFound | BadResponse)
        decision = decide.decide(invoice, answer, provider_id=provider.id, paid_late=self.settings.paid_late)
        return await self._apply(invoice, provider, decision), provider.id

    def _provider_for(self, invoice: Invoice, provider_id: str | None) -> Provider | None:
        if provider_id is None:
            return None  # no provider and no default_provider: skipped silently, counted
        provider = self.providers.get(provider_id)
        if provider is None and provider_id not in self._warned:
            self._warned.add(provider_id)
            logger.warning(
                "invoices of provider {!r} are skipped: it is not configured (add a [providers.{}] section)",
                provider_id,
                provider_id,
            )
        return provider

    async def _apply(self, invoice: Invoice, provider: Provider, decision: Decision) -> str:
        now = self.clock()
        next_at = self._next_check(invoice, now)
        for record in decision.audits:
            if record.action in ("invoice.unknown_status", "invoice.amount_mismatch"):
                logger.warning("invoice {}: {} ({})", invoice.id, record.action, decision.observation)
        if decision.settles:
            return await self._settle(invoice, provider.id, provider, decision)
        if decision.new_status is not None:
            outcome = await self.store.record_transition(
                invoice,
                new_status=decision.new_status,
                now=now,
                next_check_at=next_at,
                observation=decision.observation,
                audits=decision.audits,
            )
            return decision.kind if outcome is not None else await self._fenced(invoice)
        done = await self.store.record_check(
            invoice, now=now, next_check_at=next_at, observation=decision.observation, audits=decision.audits
        )
        return decision.kind if done else await self._fenced(invoice)

    async def _settle(
        self,
        invoice: Invoice,
        provider_id: str | None,
        provider: Provider | None,
        decision: Decision | None,
        *,
        recovered: bool = False,
    ) -> str:
        """Settle (`decision` given) or recover (a settled invoice without its license) in one transaction."""
        assert self.signing_key is not None
        now = self.clock()
        renewal = invoice.subscription_id is not None
        license_draft = subscription = None
        kinds: tuple[str, ...] = ()
        audits: tuple[AuditRecord, ...] = decision.audits if decision else ()
        if not renewal:
            own, product = await self._policies_for(invoice)
            policy = licenses.choose_policy(own, product)
            try:
                license_draft = self._license(invoice, policy, now)
            except errors.LicenseEncodingError as exc:
                return await self._issue_failed(invoice, provider_id, decision, exc, now)
            subscription = self._subscription(invoice, policy, provider_id, now)
            if subscription is not None and provider is not None:
                kinds = provider.driver.post_settle_kinds
        if any(a.action == "invoice.paid_late" for a in audits):
            audits = await self._note_redemption(invoice, audits)
        outcome = await self.store.record_settlement(
            invoice,
            base.Settlement(
                now=now,
                next_check_at=self._next_check(invoice, now),
                observation=decision.observation if decision else None,
                provider_id=provider_id,
                audits=audits,
                license=license_draft,
                subscription=subscription,
                post_settle_kinds=kinds,
                recovered=recovered,
            ),
        )
        if outcome is None:
            return await self._fenced(invoice)
        if recovered:
            logger.info(
                "invoice {}: settled without a license; license {} issued", invoice.id, outcome.license_id
            )
            return DecisionKind.RECOVER
        assert decision is not None
        return decision.kind

    async def _policies_for(self, invoice: Invoice) -> tuple[Policy | None, list[Policy]]:
        key = (invoice.product_id, invoice.policy_id)
        found = self._policies.get(key)
        if found is None:
            found = self._policies[key] = await self.store.policies_for(invoice)
        return found

    async def _issue_failed(
        self,
        invoice: Invoice,
        provider_id: str | None,
        decision: Decision | None,
        exc: errors.LicenseEncodingError,
        now: datetime,
    ) -> str:
        """SPEC §4.11: settle nothing, audit once, reschedule, list for review."""
        observation = decision.observation if decision else "!issue_failed"
        audits: list[AuditRecord] = []
        if observation != invoice.last_provider_status:
            details = dict(decision.evidence) if decision else {}
            details |= {
                "provider_id": provider_id,
                "provider_invoice_id": invoice.provider_invoice_id,
                "raw_status": details.get("raw_status"),
                "error": exc.message,
            }
            audits.append(AuditRecord("license.issue_failed", "invoice", invoice.id, details))
            logger.error(
                "invoice {}: the license cannot be encoded, nothing settled: {}", invoice.id, exc.message
            )
        done = await self.store.record_check(
            invoice,
            now=now,
            next_check_at=self._next_check(invoice, now),
            observation=observation,
            audits=audits,
        )
        return DecisionKind.ISSUE_FAILED if done else await self._fenced(invoice)

    async def _fenced(self, invoice: Invoice) -> str:
        """Another writer changed the row first: do nothing more, but give back our lease if still ours."""
        await self.store.release(invoice, next_check_at=None)
        return FENCED

    async def _note_redemption(
        self, invoice: Invoice, audits: tuple[AuditRecord, ...]
    ) -> tuple[AuditRecord, ...]:
        """A paid-late settle keeps a cancelled redemption cancelled; say so in the audit (SPEC §4.9)."""
        status = await self.store.redemption_status(invoice.id)
        if status != "cancelled":
            return audits
        return tuple(
            AuditRecord(a.action, a.target_kind, a.target_id, {**a.details, "redemption_cancelled": True})
            if a.action == "invoice.paid_late"
            else a
            for a in audits
        )

    def _license(self, invoice: Invoice, policy: Policy | None, now: datetime) -> base.LicenseDraft:
        assert self.signing_key is not None
        license_id = ids.new_id()
        terms = licenses.license_terms(policy, now)
        key = licenses.sign_license(
            self.signing_key, product_id=invoice.product_id, license_id=license_id, terms=terms
        )
        return base.LicenseDraft(
            id=license_id,
            product_id=invoice.product_id,
            policy_id=terms.policy_id,
            license_key=key,
            issued_at=terms.issued_at,
            expires_at=terms.expires_at,
            grace_seconds=terms.grace_seconds,
            max_machines=terms.max_machines,
            entitlements=terms.entitlements,
            is_trial=terms.is_trial,
            buyer_email=invoice.buyer_email,
        )

    @staticmethod
    def _subscription(
        invoice: Invoice, policy: Policy | None, provider_id: str | None, now: datetime
    ) -> base.SubscriptionDraft | None:
        terms = licenses.subscription_terms(policy, now)
        if terms is None or policy is None:
            return None
        listed = invoice.listed_currency is not None and invoice.listed_value is not None
        return base.SubscriptionDraft(
            id=ids.new_id(),
            policy_id=policy.id,
            product_id=invoice.product_id,
            started_at=terms.started_at,
            period_days=terms.period_days,
            listed_currency=invoice.listed_currency if listed and invoice.listed_currency else "SAT",
            listed_value=invoice.listed_value
            if listed and invoice.listed_value is not None
            else invoice.amount_sats,
            payment_provider_id=provider_id,
            next_renewal_at=terms.next_renewal_at,
        )

    def _next_check(self, invoice: Invoice, now: datetime) -> datetime:
        return decide.next_check_at(
            self.settings.schedule, invoice.created_at, now, self.rng.uniform(0.9, 1.1)
        )

    # -- provider traffic -----------------------------------------------------------------------------------
    def _gate(self, provider: Provider) -> ProviderGate:
        gate = self._gates.get(provider.id)
        if gate is None:
            gate = self._gates[provider.id] = ProviderGate(
                provider, sleep=self.sleep, on_request=self.observer.request
            )
        return gate

    async def _ask(
        self, gate: ProviderGate, invoice: Invoice, lease_until: datetime | None
    ) -> Answer | _Failure | object:
        provider = gate.provider
        common = provider.common
        # A batching provider's semaphore bounds its fetch_many calls, not the invoices waiting in a batch.
        async with gate.semaphore if gate.batcher is None else contextlib.nullcontext():
            if gate.circuit_open:
                return _Failure(DecisionKind.PROVIDER_ERROR)
            if gate.ended_until is not None:
                return _Failure(DecisionKind.PROVIDER_ERROR, gate.ended_until)
            if lease_until is not None and lease_until - self.clock() < timedelta(seconds=common.worst_fetch):
                return _RELEASE
            gate.fetches += 1
            try:
                answer: Answer = await gate.fetch(invoice.provider_invoice_id)
            except errors.InvoiceNotFound as exc:
                gate.answers += 1
                return NotFound(exc.message)
            except errors.BadProviderResponse as exc:
                return BadResponse(exc.message)
            except errors.ProviderAuthError as exc:
                if not gate.circuit_open:
                    gate.circuit_open = True
                    logger.error(
                        "provider {}: credentials refused, skipping it for the rest of this pass: {}",
                        provider.id,
                        exc.message,
                    )
                return _Failure(DecisionKind.PROVIDER_ERROR)
            except errors.ProviderUnavailable as exc:
                if exc.retry_after is not None and exc.retry_after > common.retry_max_delay:
                    until = self.clock() + timedelta(seconds=exc.retry_after)
                    if gate.ended_until is None:
                        logger.warning(
                            "provider {} asks us to come back in {:.0f}s: done with it for this pass",
                            provider.id,
                            exc.retry_after,
                        )
                    gate.ended_until = max(gate.ended_until or until, until)
                    return _Failure(DecisionKind.PROVIDER_ERROR, gate.ended_until)
                logger.info("provider {}: invoice {} unavailable: {}", provider.id, invoice.id, exc.message)
                return _Failure(DecisionKind.PROVIDER_ERROR)
            except errors.DriverError as exc:
                logger.warning("provider {}: invoice {}: {}", provider.id, invoice.id, exc.message)
                return _Failure(DecisionKind.PROVIDER_ERROR)
            except Exception:  # third-party driver code: isolate it (SPEC §4.11), never our own bugs
                gate.unexpected += 1
                if gate.unexpected == 1:
                    logger.opt(exception=True).error(
                        "provider {}: the driver raised an unexpected exception (invoice {}); "
                        "further ones this pass are counted, not logged",
                        provider.id,
                        invoice.id,
                    )
                return _Failure(DecisionKind.PROVIDER_ERROR)
            gate.answers += 1
            return answer

    async def _release_held(self) -> None:
        held, self._held = list(self._held.values()), {}
        for invoice in held:
            await self.store.release(invoice, next_check_at=None)
        if held:
            logger.info("released {} invoice lease(s) on shutdown", len(held))

    # -- post-settle tasks (SPEC §8) ------------------------------------------------------------------------
    async def _post_settle_tasks(self) -> None:
        """Run every due task once; each leaves done, failed or with a later `next_attempt_at`."""
        while True:
            due = await self.store.due_tasks(now=self.clock(), batch_size=self.settings.batch_size)
            if not due:
                return
            async with asyncio.TaskGroup() as group:
                for task in due:
                    group.create_task(self._post_settle(task))

    async def _post_settle(self, task: base.DueTask) -> None:
        now = self.clock()
        if not await self.store.claim_task(task, now=now, lease_until=now + self.settings.lease):
            return  # another instance took this attempt
        result = await self._attempt(task)
        self._summary.tasks[result.status] += 1
        self.observer.task(task.provider_id, result.status)
        self.beat()
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
        gate = self._gate(provider)
        try:
            async with gate.semaphore:
                await gate.take_turn()
                async with asyncio.timeout(provider.common.timeout * 4 + 1):
                    outcome = await driver.post_settle(
                        PostSettleTask(
                            task.invoice_id,
                            task.kind,
                            provider.id,
                            task.provider_invoice_id,
                            task.attempts + 1,
                        )
                    )
        except (errors.DriverError, TimeoutError) as exc:
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
                audit=AuditRecord(
                    "post_settle.failed",
                    "invoice",
                    task.invoice_id,
                    {
                        "provider_id": task.provider_id,
                        "provider_invoice_id": task.provider_invoice_id,
                        "raw_status": None,
                        "kind": task.kind,
                        "attempts": attempt,
                        "error": error,
                    },
                ),
            )
        steps = self.settings.post_settle_backoff
        step = steps[min(attempt - 1, len(steps) - 1)]
        return base.TaskResult("pending", next_attempt_at=self.clock() + step, last_error=error)

    # -- dry run --------------------------------------------------------------------------------------------
    async def _dry_one(self, invoice: Invoice, emit: Callable[[dict[str, Any]], None]) -> None:
        provider_id = invoice.payment_provider_id or self.settings.default_provider
        line: dict[str, Any] = {
            "invoice_id": invoice.id,
            "provider_id": provider_id,
            "status": invoice.status.value,
            "raw_status": None,
            "raw_additional_status": None,
        }
        kind: str
        evidence: dict[str, Any] = {}
        if invoice.status is InvoiceStatus.SETTLED:
            kind = DecisionKind.RECOVER if not invoice.has_license else DecisionKind.NO_CHANGE
        else:
            provider = self._provider_for(invoice, provider_id)
            if provider is None:
                kind = DecisionKind.SKIPPED
                evidence = {"reason": "no provider configured for this invoice"}
            else:
                answer = await self._ask(self._gate(provider), invoice, None)
                if isinstance(answer, _Failure):
                    kind = answer.kind
                else:
                    assert isinstance(answer, Snapshot | NotFound | BadResponse)
                    decision = decide.decide(
                        invoice, answer, provider_id=provider.id, paid_late=self.settings.paid_late
                    )
                    kind = decision.kind
                    evidence = dict(decision.evidence)
                    evidence["audits"] = [a.action for a in decision.audits]
                    if decision.new_status is not None:
                        evidence["new_status"] = decision.new_status.value
                    line["raw_status"] = evidence.get("raw_status")
                    line["raw_additional_status"] = evidence.get("raw_additional_status")
        line["decision"] = str(kind)
        line["evidence"] = evidence
        self._summary.count(provider_id, kind)
        emit(line)
