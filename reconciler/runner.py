"""The reconcile pass (SPEC §4): claim -> classify (ask, decide, plan) -> record.

The only code that awaits both the store and the drivers. Every claimed row leaves the pass recorded or
released: a row that cannot be read is quarantined (SPEC §4.11), a second row of one payment is held back
as a duplicate, a provider's trouble reschedules only its own invoices, and whatever ends the pass (a stop,
a store failure, a bug) releases the leases it still holds. The dry run classifies through the same code
and writes nothing.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from reconciler import decide, errors, ids, licenses, settlement
from reconciler.decide import BadResponse, Decision, DecisionKind, NotFound
from reconciler.driver_api import (
    Done,
    NotApplicable,
    PostSettleTask,
    Snapshot,
    SupportsPostSettle,
)
from reconciler.models import AuditRecord, Invoice, InvoiceStatus, Policy, Unreadable, UnreadablePolicy
from reconciler.store import base
from reconciler.timeutil import Clock, format_ts, utcnow
from reconciler.traffic import Failure, ProviderGate, Release, Sleep
from reconciler.traffic import Provider as Provider  # re-exported: part of the runner's interface

#: Extra counters beside the decision kinds: rows another writer changed first, rows released untouched.
FENCED = "fenced"
RELEASED = "released"
#: Every kind an invoice can leave a pass with (metrics create each series up front).
KINDS: tuple[str, ...] = (*(kind.value for kind in DecisionKind), FENCED, RELEASED)
#: A pass running longer than this logs a progress line this often.
PROGRESS_EVERY = 10.0
#: The summary's `degraded` key for rows the store could not read (beside provider ids).
UNREADABLE_ROWS = "invoices"


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


# -- what the classification of one row found ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Quarantine:
    """The row, or a policy it needs, cannot be read: held back for a person."""

    row: Invoice | Unreadable
    provider_id: str | None
    column: str
    reason: str
    policy_id: str | None = None


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Another row of the same payment is the one the reconciler settles."""

    invoice: Invoice
    provider_id: str
    winner_id: str


@dataclass(frozen=True, slots=True)
class Skip:
    """No configured provider for this invoice."""

    invoice: Invoice
    provider_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Unanswered:
    """The provider gave no answer (or the lease was too short to ask)."""

    invoice: Invoice
    provider_id: str
    failure: Failure | Release


@dataclass(frozen=True, slots=True)
class Decided:
    """A decision (None: the recovery of a settled invoice without its license) and, when it settles, the
    plan of what the settle writes."""

    invoice: Invoice
    provider_id: str | None
    decision: Decision | None
    plan: settlement.Plan | settlement.IssueFailed | None = None
    kinds_of: Provider | None = None

    @property
    def kind(self) -> str:
        if isinstance(self.plan, settlement.IssueFailed):
            return DecisionKind.ISSUE_FAILED
        if self.decision is None:
            return DecisionKind.RECOVER if not self.invoice.has_license else DecisionKind.NO_CHANGE
        return self.decision.kind


Verdict = Quarantine | Duplicate | Skip | Unanswered | Decided


def _kind(verdict: Verdict) -> str:
    if isinstance(verdict, Quarantine):
        return DecisionKind.UNREADABLE
    if isinstance(verdict, Duplicate):
        return DecisionKind.DUPLICATE
    if isinstance(verdict, Skip):
        return DecisionKind.SKIPPED
    if isinstance(verdict, Unanswered):
        return RELEASED if isinstance(verdict.failure, Release) else verdict.failure.kind
    return verdict.kind


@dataclass
class _Pass:
    """Everything one pass (or dry run) keeps while it runs; a new one per pass."""

    started_at: datetime
    summary: PassSummary
    gates: dict[str, ProviderGate] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)
    policies: dict[tuple[str, str | None], tuple[Any, list[Any]]] = field(default_factory=dict)
    #: leased rows not yet recorded, by id: released whatever ends the pass
    held: dict[Any, base.Row] = field(default_factory=dict)
    quarantined: set[str] = field(default_factory=set)
    warned_no_provider: bool = False
    done: int = 0
    #: rows released untouched: a claim that found nothing is tried again after one of these
    returned: int = 0


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
        #: providers whose credentials were refused, and why, until a later request to them succeeds
        self.refused: dict[str, str] = {}
        self._pass = _Pass(self.started_at, PassSummary(started_at=self.started_at))

    # -- the pass -------------------------------------------------------------------------------------------
    async def run_pass(self, *, stop: asyncio.Event | None = None) -> PassSummary:
        """Claim and settle every due candidate until nothing is in flight and a claim returns nothing (or
        `stop` is set). However the pass ends, the leases it still holds are released."""
        if self.signing_key is None:
            raise errors.SigningKeyError("a pass that writes needs the license signing key")
        p = self._begin()
        await self.store.upsert_instance(
            base.InstanceRow(self.owner, socket.gethostname(), os.getpid(), self.started_at, p.started_at)
        )
        progress = asyncio.create_task(self._progress(p))
        try:
            async with asyncio.TaskGroup() as group:
                await self._claim_and_reconcile(p, group, stop)
            if stop is None or not stop.is_set():
                await self._post_settle_tasks()
        except BaseExceptionGroup as group:
            # A store failure ends the pass (the daemon retries next tick): surface it as itself, not
            # wrapped in the task group's ExceptionGroup. Anything else is a bug and stays loud.
            unavailable, others = group.split(errors.StoreUnavailable)
            if unavailable is None or others is not None:
                raise
            raise _first_leaf(unavailable) from group
        finally:
            progress.cancel()
            if p.held:
                await asyncio.shield(self._release_held(p))
        summary = self._finish(p)
        await self.store.upsert_instance(
            base.InstanceRow(
                self.owner,
                socket.gethostname(),
                os.getpid(),
                self.started_at,
                p.started_at,
                summary.finished_at,
                summary.to_dict(),
            )
        )
        return summary

    async def _claim_and_reconcile(
        self, p: _Pass, group: asyncio.TaskGroup, stop: asyncio.Event | None
    ) -> None:
        """Keep between one and two batches in flight: the next claim overlaps the current provider calls,
        so a slow answer never idles the rest of the batch. The pass ends when a claim returns nothing while
        nothing is in flight (a row released untouched meanwhile is claimed again)."""
        in_flight = 0
        finished = asyncio.Event()

        def one_done(_: object) -> None:
            nonlocal in_flight
            in_flight -= 1
            finished.set()

        async def next_finish() -> None:
            finished.clear()
            await finished.wait()

        while stop is None or not stop.is_set():
            if in_flight >= self.settings.batch_size:
                await next_finish()
                continue
            batch = await self.store.claim(
                owner=self.owner,
                pass_start=p.started_at,
                now=self.clock(),
                lease=self.settings.lease,
                max_age=self.settings.max_age,
                batch_size=self.settings.batch_size,
            )
            if not batch:
                returned = p.returned
                while in_flight and p.returned == returned and (stop is None or not stop.is_set()):
                    await next_finish()
                if p.returned == returned:
                    return
                continue
            p.summary.claimed += len(batch)
            self.beat()
            lease_until = self.clock() + self.settings.lease
            p.held.update((row.id, row) for row in batch)
            winners = await self._duplicates(batch)
            for row in batch:
                task = group.create_task(self._one(p, row, lease_until, winners))
                in_flight += 1
                task.add_done_callback(one_done)

    async def dry_run(
        self, emit: Callable[[dict[str, Any]], None], *, only: base.Row | None = None
    ) -> PassSummary:
        """Every provider read of a pass and no write (SPEC §4.12); `emit` gets one line per decision."""
        p = self._begin()
        if only is not None:
            await self._dry_one(p, only, await self._duplicates([only]), emit)
        else:
            offset = 0
            while True:
                page = await self.store.peek(
                    pass_start=p.started_at,
                    now=self.clock(),
                    max_age=self.settings.max_age,
                    batch_size=self.settings.batch_size,
                    offset=offset,
                )
                if not page:
                    break
                offset += len(page)
                winners = await self._duplicates(page)
                async with asyncio.TaskGroup() as group:
                    for row in page:
                        group.create_task(self._dry_one(p, row, winners, emit))
        return self._finish(p)

    def _begin(self) -> _Pass:
        started = self.clock()
        self._pass = _Pass(started, PassSummary(started_at=started))
        return self._pass

    def _finish(self, p: _Pass) -> PassSummary:
        summary = p.summary
        summary.finished_at = self.clock()
        for gate in p.gates.values():
            reason = gate.degraded()
            if reason is not None:
                summary.degraded[gate.provider.id] = reason
        if p.quarantined:
            summary.degraded[UNREADABLE_ROWS] = f"{len(p.quarantined)} unreadable row(s) quarantined"
        circuits = {g.provider.id for g in p.gates.values() if g.circuit_open} | set(self.refused)
        self.observer.pass_finished(summary, sorted(self.providers), circuits)
        self.beat()
        return summary

    def beat(self) -> None:
        """Record progress for the watchdog and /healthz."""
        self.heartbeat = asyncio.get_running_loop().time()

    async def _progress(self, p: _Pass) -> None:
        """A line every PROGRESS_EVERY seconds while a pass runs, so a long pass is not silent."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            elapsed = loop.time() - began
            logger.info(
                "pass in progress: {} claimed, {} done in {:.0f}s ({:.1f} invoices/s)",
                p.summary.claimed,
                p.done,
                elapsed,
                p.done / elapsed,
            )

    # -- one row --------------------------------------------------------------------------------------------
    async def _one(self, p: _Pass, row: base.Row, lease_until: datetime, winners: Mapping[str, str]) -> None:
        verdict = await self._classify(p, row, lease_until, winners)
        kind = await self._record(p, verdict)
        # Only a recorded row leaves `held`: a cancelled one is still ours to release.
        p.held.pop(row.id, None)
        provider_id = verdict.provider_id
        p.done += 1
        p.summary.count(provider_id, kind)
        self.observer.decision(provider_id, kind)
        self.beat()

    async def _classify(
        self, p: _Pass, row: base.Row, lease_until: datetime | None, winners: Mapping[str, str]
    ) -> Verdict:
        """What this row calls for. Asks the provider when it must; writes nothing."""
        default = self.settings.default_provider
        if isinstance(row, Unreadable):
            return Quarantine(row, row.payment_provider_id or default, row.column, row.reason)
        invoice = row
        provider_id = invoice.payment_provider_id or default
        winner = winners.get(invoice.id)
        if winner is not None and provider_id is not None:
            return Duplicate(invoice, provider_id, winner)
        if invoice.status is InvoiceStatus.SETTLED:
            if invoice.has_license:  # only `explain` looks at such an invoice
                return Decided(invoice, provider_id, None)
            provider = self.providers.get(provider_id) if provider_id else None
            return await self._planned(p, invoice, provider_id, provider, None)
        provider = self._provider_for(p, invoice, provider_id)
        if provider is None:
            reason = (
                f"provider {provider_id!r} is not configured"
                if provider_id
                else "no payment_provider_id and no default_provider"
            )
            return Skip(invoice, provider_id, reason)
        answer = await self._gate(p, provider).ask(
            invoice.provider_invoice_id, invoice_id=invoice.id, lease_until=lease_until
        )
        if isinstance(answer, Failure | Release):
            return Unanswered(invoice, provider.id, answer)
        decision = decide.decide(invoice, answer, provider_id=provider.id, paid_late=self.settings.paid_late)
        if not decision.settles:
            return Decided(invoice, provider.id, decision)
        return await self._planned(p, invoice, provider.id, provider, decision)

    async def _planned(
        self,
        p: _Pass,
        invoice: Invoice,
        provider_id: str | None,
        provider: Provider | None,
        decision: Decision | None,
    ) -> Decided | Quarantine:
        policy: Policy | UnreadablePolicy | None = None
        if invoice.subscription_id is None:
            policy = licenses.choose_policy(*await self._policies_for(p, invoice))
        plan = settlement.plan(
            invoice,
            policy,
            provider_id=provider_id,
            post_settle_kinds=provider.driver.post_settle_kinds if provider is not None else (),
            now=self.clock(),
            signing_key=self.signing_key,
        )
        if isinstance(plan, settlement.PolicyUnreadable):
            return Quarantine(invoice, provider_id, plan.column, plan.policy.reason, plan.policy.id)
        return Decided(invoice, provider_id, decision, plan, provider)

    def _provider_for(self, p: _Pass, invoice: Invoice, provider_id: str | None) -> Provider | None:
        if provider_id is None:
            if not p.warned_no_provider:
                p.warned_no_provider = True
                logger.warning(
                    "invoices without a payment_provider_id are skipped (first: {}): set default_provider "
                    "to the provider that serves them",
                    invoice.id,
                )
            return None
        provider = self.providers.get(provider_id)
        if provider is None and provider_id not in p.warned:
            p.warned.add(provider_id)
            logger.warning(
                "invoices of provider {!r} are skipped: it is not configured (add a [providers.{}] section)",
                provider_id,
                provider_id,
            )
        return provider

    async def _duplicates(self, batch: Sequence[base.Row]) -> dict[str, str]:
        """For each row of `batch` that is not the one its payment settles: the id of the one that is."""
        default = self.settings.default_provider
        if default is None:
            return {}  # rows without a provider are skipped, and UNIQUE keeps the others apart
        mine = [
            row
            for row in batch
            if isinstance(row, Invoice) and (row.payment_provider_id or default) == default
        ]
        if not mine:
            return {}
        keys = [base.PaymentKey(default, row.provider_invoice_id, True) for row in mine]
        by_payment: dict[str, list[base.PaymentRow]] = {}
        for found in await self.store.payment_rows(keys):
            by_payment.setdefault(found.provider_invoice_id, []).append(found)
        losers: dict[str, str] = {}
        for row in mine:
            winner = decide.payment_winner(by_payment.get(row.provider_invoice_id, []))
            if winner is not None and winner.id != row.id:
                losers[row.id] = winner.id
        return losers

    def _payment_key(self, invoice: Invoice, provider_id: str | None) -> base.PaymentKey | None:
        default = self.settings.default_provider
        if default is None or provider_id != default:
            return None
        return base.PaymentKey(default, invoice.provider_invoice_id, True)

    # -- recording a verdict --------------------------------------------------------------------------------
    async def _record(self, p: _Pass, verdict: Verdict) -> str:
        now = self.clock()
        if isinstance(verdict, Quarantine):
            return await self._quarantine(p, verdict, now)
        if isinstance(verdict, Duplicate):
            return await self._duplicate(verdict.invoice, verdict.provider_id, verdict.winner_id, now)
        if isinstance(verdict, Skip):
            await self.store.release(verdict.invoice, next_check_at=now + self.settings.interval)
            return DecisionKind.SKIPPED
        if isinstance(verdict, Unanswered):
            if isinstance(verdict.failure, Release):
                await self.store.release(verdict.invoice, next_check_at=None)
                p.returned += 1
                return RELEASED
            next_at = self._reschedule(verdict.invoice, now, verdict.failure.not_before)
            await self.store.release(verdict.invoice, next_check_at=next_at)
            return verdict.failure.kind
        return await self._apply(p, verdict, now)

    async def _apply(self, p: _Pass, verdict: Decided, now: datetime) -> str:
        invoice, decision = verdict.invoice, verdict.decision
        next_at = self._next_check(invoice, now)
        if decision is not None:
            for record in decision.audits:
                if record.action in ("invoice.unknown_status", "invoice.amount_mismatch"):
                    logger.bind(invoice_id=invoice.id, provider_id=verdict.provider_id).warning(
                        "invoice {}: {} ({})", invoice.id, record.action, decision.observation
                    )
        if isinstance(verdict.plan, settlement.IssueFailed):
            return await self._issue_failed(p, invoice, verdict.provider_id, decision, verdict.plan, now)
        if isinstance(verdict.plan, settlement.Plan):
            return await self._settle(p, verdict, verdict.plan, now)
        assert decision is not None
        if decision.new_status is not None:
            outcome = await self.store.record_transition(
                invoice,
                new_status=decision.new_status,
                now=now,
                next_check_at=next_at,
                observation=decision.observation,
                audits=decision.audits,
            )
            return decision.kind if outcome is not None else await self._fenced(p, invoice)
        done = await self.store.record_check(
            invoice, now=now, next_check_at=next_at, observation=decision.observation, audits=decision.audits
        )
        return decision.kind if done else await self._fenced(p, invoice)

    async def _settle(self, p: _Pass, verdict: Decided, plan: settlement.Plan, now: datetime) -> str:
        """Settle (a decision) or recover (a settled invoice without its license) in one transaction."""
        invoice, decision = verdict.invoice, verdict.decision
        recovered = decision is None
        audits: tuple[AuditRecord, ...] = decision.audits if decision else ()
        if any(a.action == "invoice.paid_late" for a in audits):
            audits = await self._note_redemption(invoice, audits)
        outcome = await self.store.record_settlement(
            invoice,
            base.Settlement(
                now=now,
                next_check_at=self._next_check(invoice, now),
                observation=decision.observation if decision else None,
                provider_id=verdict.provider_id,
                audits=audits,
                license=plan.license,
                subscription=plan.subscription,
                post_settle_kinds=plan.post_settle_kinds,
                recovered=recovered,
                payment=self._payment_key(invoice, verdict.provider_id),
            ),
        )
        if isinstance(outcome, base.DuplicateFound):
            assert verdict.provider_id is not None  # a payment key needs the provider
            await self._duplicate(invoice, verdict.provider_id, outcome.winner_id, now)
            return DecisionKind.DUPLICATE
        if outcome is None:
            return await self._fenced(p, invoice)
        if recovered:
            logger.bind(invoice_id=invoice.id, provider_id=verdict.provider_id).info(
                "invoice {}: settled without a license; license {} issued", invoice.id, outcome.license_id
            )
        return verdict.kind

    async def _quarantine(self, p: _Pass, verdict: Quarantine, now: datetime) -> str:
        """SPEC §4.11: the row (or a policy it needs) cannot be read. Audited once per reason, logged once per
        pass, rescheduled; the pass is degraded."""
        row = verdict.row
        label = row.label if isinstance(row, Unreadable) else row.id
        observation = f"!unreadable:{verdict.column}"
        audits: list[AuditRecord] = []
        if observation != row.last_provider_status:
            extra = {"policy_id": verdict.policy_id} if verdict.policy_id else {}
            audits.append(
                decide.unreadable_audit(row, verdict.column, verdict.reason, verdict.provider_id, **extra)
            )
        if label not in p.quarantined:
            p.quarantined.add(label)
            logger.bind(invoice_id=label, provider_id=verdict.provider_id).warning(
                "invoice {} is quarantined: {} {}; fix the row (it is checked again later)",
                label,
                verdict.column,
                verdict.reason,
            )
        if isinstance(row, Invoice):
            next_at = self._next_check(row, now)
        else:  # its age may be what cannot be read: the longest step of the schedule
            next_at = now + self.settings.schedule[-1] * self.rng.uniform(0.9, 1.1)
        done = await self.store.record_quarantine(
            row, next_check_at=next_at, observation=observation, audits=audits, now=now
        )
        if not done:
            await self.store.release(row, next_check_at=None)
            return FENCED
        return DecisionKind.UNREADABLE

    async def _duplicate(self, invoice: Invoice, provider_id: str, winner_id: str, now: datetime) -> str:
        """One payment, one license: this row is held back, audited once naming the row that won."""
        observation = decide.duplicate_observation(winner_id)
        audits: list[AuditRecord] = []
        if observation != invoice.last_provider_status:
            audits.append(decide.duplicate_audit(invoice, provider_id, winner_id))
            logger.bind(invoice_id=invoice.id, provider_id=provider_id).warning(
                "invoice {} is another row of payment {} {!r}: only invoice {} is settled and licensed",
                invoice.id,
                provider_id,
                invoice.provider_invoice_id,
                winner_id,
            )
        done = await self.store.record_quarantine(
            invoice,
            next_check_at=self._next_check(invoice, now),
            observation=observation,
            audits=audits,
            now=now,
        )
        if not done:
            await self.store.release(invoice, next_check_at=None)
            return FENCED
        return DecisionKind.DUPLICATE

    async def _policies_for(self, p: _Pass, invoice: Invoice) -> tuple[Any, list[Any]]:
        """The invoice's policy candidates, read once per pass: storefront configuration, not invoice state."""
        key = (invoice.product_id, invoice.policy_id)
        found = p.policies.get(key)
        if found is None:
            found = p.policies[key] = await self.store.policies_for(invoice)
        return found

    async def _issue_failed(
        self,
        p: _Pass,
        invoice: Invoice,
        provider_id: str | None,
        decision: Decision | None,
        failed: settlement.IssueFailed,
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
                "error": failed.reason,
            }
            audits.append(AuditRecord("license.issue_failed", "invoice", invoice.id, details))
            logger.bind(invoice_id=invoice.id, provider_id=provider_id).error(
                "invoice {}: the license cannot be encoded, nothing settled: {}", invoice.id, failed.reason
            )
        done = await self.store.record_check(
            invoice,
            now=now,
            next_check_at=self._next_check(invoice, now),
            observation=observation,
            audits=audits,
            checked=decision is not None,
        )
        return DecisionKind.ISSUE_FAILED if done else await self._fenced(p, invoice)

    async def _fenced(self, p: _Pass, invoice: Invoice) -> str:
        """Another writer changed the row first: do nothing more, but give back our lease if still ours (the
        pass claims the row again if it is still due)."""
        await self.store.release(invoice, next_check_at=None)
        p.returned += 1
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

    def _next_check(self, invoice: Invoice, now: datetime) -> datetime:
        return decide.next_check_at(
            self.settings.schedule, invoice.created_at, now, self.rng.uniform(0.9, 1.1)
        )

    def _reschedule(self, invoice: Invoice, now: datetime, not_before: datetime | None) -> datetime:
        """The next check after a failure: the schedule's, or later if the provider asked us to wait, but
        never past the invoice's last chance inside `max_age` (SPEC §4.3)."""
        next_at = self._next_check(invoice, now)
        if not_before is None:
            return next_at
        last_chance = invoice.created_at + self.settings.max_age - self.settings.interval
        return max(next_at, min(not_before, last_chance))

    # -- provider traffic -----------------------------------------------------------------------------------
    def _gate(self, p: _Pass, provider: Provider) -> ProviderGate:
        gate = p.gates.get(provider.id)
        if gate is None:
            gate = p.gates[provider.id] = ProviderGate(
                provider,
                clock=self.clock,
                sleep=self.sleep,
                rng=self.rng,
                on_request=self.observer.request,
                on_credentials=self._credentials,
            )
        return gate

    def _credentials(self, provider_id: str, refused: str | None) -> None:
        if refused is None:
            if self.refused.pop(provider_id, None) is not None:
                logger.info("provider {}: credentials accepted again", provider_id)
                self.observer.credentials(provider_id, None)
        elif self.refused.get(provider_id) != refused:
            self.refused[provider_id] = refused
            self.observer.credentials(provider_id, refused)

    async def _release_held(self, p: _Pass) -> None:
        held, p.held = list(p.held.values()), {}
        try:
            released = await self.store.release_all(held)
        except errors.StoreError as exc:
            logger.error(
                "could not release {} invoice lease(s) ({}); they expire after [reconcile] lease",
                len(held),
                exc.message,
            )
            return
        if released:
            logger.info("released {} invoice lease(s) as the pass ended", released)

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
        self._pass.summary.tasks[result.status] += 1
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
        gate = self._gate(self._pass, provider)
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
    async def _dry_one(
        self, p: _Pass, row: base.Row, winners: Mapping[str, str], emit: Callable[[dict[str, Any]], None]
    ) -> None:
        verdict = await self._classify(p, row, None, winners)
        kind = _kind(verdict)
        provider_id = verdict.provider_id
        line: dict[str, Any] = {
            "invoice_id": row.label if isinstance(row, Unreadable) else row.id,
            "provider_id": provider_id,
            "status": row.status.value if isinstance(row, Invoice) else None,
            "raw_status": None,
            "raw_additional_status": None,
        }
        evidence: dict[str, Any] = {}
        if isinstance(verdict, Quarantine):
            label = line["invoice_id"]
            p.quarantined.add(label)
            evidence = {"column": verdict.column, "reason": verdict.reason}
            if verdict.policy_id:
                evidence["policy_id"] = verdict.policy_id
        elif isinstance(verdict, Duplicate):
            evidence = {"winner_invoice_id": verdict.winner_id}
        elif isinstance(verdict, Skip):
            evidence = {"reason": verdict.reason}
        elif isinstance(verdict, Unanswered):
            if isinstance(verdict.failure, Failure):
                evidence = {"error": verdict.failure.message}
        elif verdict.decision is not None:
            decision = verdict.decision
            evidence = dict(decision.evidence)
            evidence["audits"] = [a.action for a in decision.audits]
            if decision.new_status is not None:
                evidence["new_status"] = decision.new_status.value
            line["raw_status"] = evidence.get("raw_status")
            line["raw_additional_status"] = evidence.get("raw_additional_status")
        if isinstance(verdict, Decided) and isinstance(verdict.plan, settlement.IssueFailed):
            evidence["error"] = verdict.plan.reason
        line["decision"] = str(kind)
        line["evidence"] = evidence
        p.summary.count(provider_id, kind)
        emit(line)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


# Kept for readers of older call sites: the answer types the classification works with.
__all__ = [
    "FENCED",
    "KINDS",
    "RELEASED",
    "BadResponse",
    "Decided",
    "Duplicate",
    "NotFound",
    "Observer",
    "PassSummary",
    "Provider",
    "Quarantine",
    "Runner",
    "RunnerSettings",
    "Skip",
    "Snapshot",
    "Unanswered",
    "instance_owner",
]
