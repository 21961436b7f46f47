"""Recording a verdict (docs/reconcile.md §5–§11): one finished plan handed to the store per invoice.

Awaits only the store. Every path leaves the row with a new status or a later `next_check_at`, or releases
it untouched (fenced, lease too short) so the pass claims it again.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime

from loguru import logger

from reconciler import audit, decide, review, settlement
from reconciler.audit import Action
from reconciler.coalesce import Coalescer, Failed
from reconciler.decide import Decision, DecisionKind
from reconciler.models import AuditRecord, Invoice, Unreadable
from reconciler.passes import FENCED, RELEASED, PassState, RunnerSettings
from reconciler.store import base
from reconciler.timeutil import Clock
from reconciler.traffic import Release
from reconciler.verdicts import Decided, Duplicate, Quarantine, Skip, Unanswered, Verdict

_Settled = base.SettleOutcome | base.DuplicateFound | None


# How long a write waits for the others of its group at most: it goes sooner when its group is full or when
# no other invoice is still being decided (`company`). At 16 provider requests in flight, 20 ms each, a
# settlement is ready about every 2 ms: a 2 ms window committed groups of about 6, and 50 ms gives groups of
# about 34 and an eighth less CPU per invoice (bench/pass.py, (b) at C = 16).
WRITE_WINDOW = 0.05


class Bookkeeping:
    """The no-change checks and lease releases of the invoices in flight, written together: one transaction
    for everything that finished within `WINDOW` seconds (or `size` rows), each row still fenced by its own
    lease token. `company` is how many invoices are still being decided (coalesce.Coalescer)."""

    WINDOW = WRITE_WINDOW

    def __init__(self, store: base.Store, *, size: int, company: Callable[[], int] | None = None) -> None:
        self.store = store
        self._group: Coalescer[base.CheckWrite | base.ReleaseWrite, bool] = Coalescer(
            self._write, size=size, window=self.WINDOW, in_flight=2, company=company
        )

    def hurry(self) -> None:
        self._group.hurry()

    async def check(self, write: base.CheckWrite) -> bool:
        """Record a no-change check (without audit rows); False when another writer fenced it out."""
        return await self._group.submit(write)

    async def release(self, write: base.ReleaseWrite) -> bool:
        """Give a lease back; False when it was no longer ours."""
        return await self._group.submit(write)

    async def _write(self, items: list[base.CheckWrite | base.ReleaseWrite]) -> list[bool | Failed]:
        checks = [w for w in items if isinstance(w, base.CheckWrite)]
        releases = [w for w in items if isinstance(w, base.ReleaseWrite)]
        written = await self.store.record_bookkeeping(checks, releases)
        return [w.invoice.id in written for w in items]


class Settlements:
    """Settle transactions of the invoices in flight, committed together (docs/reconcile.md §8): one
    transaction for the settlements that came within `WINDOW` seconds (at most `SIZE`), each one whole.
    When a group fails, each of its settlements is tried alone, so a failure is only its own invoice's."""

    WINDOW = WRITE_WINDOW
    #: A commit costs about the same for 50 settlements as for 200, and a read of list pages readies a few
    #: hundred at once: at 200 a group, a 10k pass spends a seventh less CPU on its SQLite thread than at 50.
    SIZE = 200

    def __init__(self, store: base.Store, *, company: Callable[[], int] | None = None) -> None:
        self.store = store
        self._group: Coalescer[tuple[Invoice, base.Settlement], _Settled] = Coalescer(
            self._write, size=self.SIZE, window=self.WINDOW, in_flight=2, company=company
        )

    def hurry(self) -> None:
        self._group.hurry()

    async def settle(self, invoice: Invoice, settlement: base.Settlement) -> _Settled:
        return await self._group.submit((invoice, settlement))

    async def _write(self, items: list[tuple[Invoice, base.Settlement]]) -> list[_Settled | Failed]:
        if len(items) > 1:
            try:
                return list(await self.store.record_settlements(items))
            except Exception as exc:
                logger.debug("{} settlements together failed ({}): each on its own", len(items), exc)
        results: list[_Settled | Failed] = []
        for invoice, draft in items:
            try:
                results.append(await self.store.record_settlement(invoice, draft))
            except Exception as exc:
                results.append(Failed(exc))
        return results


class Recorder:
    def __init__(
        self,
        store: base.Store,
        settings: RunnerSettings,
        *,
        clock: Clock,
        rng: random.Random,
        company: Callable[[], int] | None = None,
    ) -> None:
        """`company`: how many invoices are still being decided, whose writes may join a group."""
        self.store = store
        self.settings = settings
        self.clock = clock
        self.rng = rng
        self.bookkeeping = Bookkeeping(store, size=settings.batch_size, company=company)
        self.settlements = Settlements(store, company=company)

    def hurry(self) -> None:
        """No invoice is being decided any more: what waits for company is written now."""
        self.bookkeeping.hurry()
        self.settlements.hurry()

    async def record(self, p: PassState, verdict: Verdict) -> str:
        """Write what `verdict` calls for; the kind the invoice leaves the pass with."""
        now = self.clock()
        if isinstance(verdict, Quarantine):
            return await self._quarantine(p, verdict, now)
        if isinstance(verdict, Duplicate):
            return await self.duplicate(p, verdict.invoice, verdict.provider_id, verdict.winner_id, now)
        if isinstance(verdict, Skip):
            await self.bookkeeping.release(base.ReleaseWrite(verdict.invoice, now + self.settings.interval))
            return DecisionKind.SKIPPED
        if isinstance(verdict, Unanswered):
            if isinstance(verdict.failure, Release):
                await self.bookkeeping.release(base.ReleaseWrite(verdict.invoice, None))
                p.returned += 1
                return RELEASED
            failure = verdict.failure
            if failure.circuit_open and failure.not_before is not None:
                # an outage burns no schedule: not asked, so back exactly when the circuit may close
                next_at = failure.not_before
            else:
                next_at = self.reschedule(verdict.invoice, now, failure.not_before)
            await self.bookkeeping.release(base.ReleaseWrite(verdict.invoice, next_at))
            return failure.kind
        return await self._apply(p, verdict, now)

    async def _apply(self, p: PassState, verdict: Decided, now: datetime) -> str:
        invoice, decision = verdict.invoice, verdict.decision
        if decision is not None:
            for record in decision.audits:
                if record.action in (Action.INVOICE_UNKNOWN_STATUS, Action.INVOICE_AMOUNT_MISMATCH):
                    logger.bind(invoice_id=invoice.id, provider_id=verdict.provider_id).warning(
                        "invoice {}: {} ({})", invoice.id, record.action, decision.observation
                    )
        if isinstance(verdict.plan, settlement.IssueFailed):
            return await self._issue_failed(p, invoice, verdict.provider_id, decision, verdict.plan, now)
        if isinstance(verdict.plan, settlement.Plan):
            return await self._settle(p, verdict, verdict.plan, now)
        assert decision is not None
        next_at = self.next_check(invoice, now)
        resolves = review.after_answer(decision, invoice.last_provider_status)
        if decision.new_status is not None:
            done = await self.store.record_transition(
                invoice,
                new_status=decision.new_status,
                now=now,
                next_check_at=next_at,
                observation=decision.observation,
                audits=decision.audits,
                resolves=resolves,
            )
            return decision.kind if done else await self._fenced(p, invoice)
        if decision.audits:
            done = await self.store.record_check(
                invoice,
                now=now,
                next_check_at=next_at,
                observation=decision.observation,
                audits=decision.audits,
                resolves=resolves,
            )
        else:  # the common case: written with the other no-change checks of the moment
            checked = now if decision.observation is not None else None
            done = await self.bookkeeping.check(
                base.CheckWrite(invoice, next_at, decision.observation, checked, resolves)
            )
        return decision.kind if done else await self._fenced(p, invoice)

    async def _settle(self, p: PassState, verdict: Decided, plan: settlement.Plan, now: datetime) -> str:
        """Settle (a decision) or recover (a settled invoice without its license) in one transaction."""
        invoice, decision = verdict.invoice, verdict.decision
        recovered = decision is None
        outcome = await self.settlements.settle(
            invoice,
            base.Settlement(
                now=now,
                next_check_at=self.next_check(invoice, now),
                observation=decision.observation if decision else None,
                provider_id=verdict.provider_id,
                audits=decision.audits if decision else (),
                license=plan.license,
                subscription=plan.subscription,
                post_settle_kinds=plan.post_settle_kinds,
                recovered=recovered,
                payment=self.payment_key(invoice, verdict.provider_id),
                resolves=review.after_settle(decision, invoice.last_provider_status),
                actor=decision.actor if decision else "reconciler",
            ),
        )
        if isinstance(outcome, base.DuplicateFound):
            assert verdict.provider_id is not None  # a payment key needs the provider
            return await self.duplicate(p, invoice, verdict.provider_id, outcome.winner_id, now)
        if outcome is None:
            return await self._fenced(p, invoice)
        if recovered:
            logger.bind(invoice_id=invoice.id, provider_id=verdict.provider_id).info(
                "invoice {}: settled without a license; license {} issued", invoice.id, outcome.license_id
            )
        return verdict.kind

    def payment_key(self, invoice: Invoice, provider_id: str | None) -> base.PaymentKey | None:
        """The payment this invoice is a row of, when other rows could be too (docs/reconcile.md §1)."""
        default = self.settings.default_provider
        if default is None or provider_id != default:
            return None
        return base.PaymentKey(default, invoice.provider_invoice_id, True)

    async def _quarantine(self, p: PassState, verdict: Quarantine, now: datetime) -> str:
        """docs/reconcile.md §11: the row (or a policy it needs) cannot be read. Audited once per reason,
        logged once per pass, rescheduled; the pass is degraded."""
        row = verdict.row
        label = row.label if isinstance(row, Unreadable) else row.id
        observation = f"!unreadable:{verdict.column}"
        audits: list[AuditRecord] = []
        if observation != row.last_provider_status:
            audits.append(
                audit.unreadable(
                    label,
                    provider_id=verdict.provider_id,
                    provider_invoice_id=row.provider_invoice_id,
                    column=verdict.column,
                    reason=verdict.reason,
                    policy_id=verdict.policy_id,
                )
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
            next_at = self.next_check(row, now)
        else:  # its age may be what cannot be read: the longest step of the schedule
            next_at = now + self.settings.schedule[-1] * self.rng.uniform(0.9, 1.1)
        done = await self.store.record_quarantine(
            row, next_check_at=next_at, observation=observation, audits=audits, now=now
        )
        if not done:
            await self.store.release(row, next_check_at=None)
            p.returned += 1
            return FENCED
        return DecisionKind.UNREADABLE

    async def duplicate(
        self, p: PassState, invoice: Invoice, provider_id: str, winner_id: str, now: datetime
    ) -> str:
        """One payment, one license: this row is held back, audited once naming the row that won."""
        observation = decide.duplicate_observation(winner_id)
        audits: list[AuditRecord] = []
        if observation != invoice.last_provider_status:
            audits.append(
                audit.duplicate(
                    invoice.id,
                    provider_id=provider_id,
                    provider_invoice_id=invoice.provider_invoice_id,
                    winner_id=winner_id,
                )
            )
            logger.bind(invoice_id=invoice.id, provider_id=provider_id).warning(
                "invoice {} is another row of payment {} {!r}: only invoice {} is settled and licensed",
                invoice.id,
                provider_id,
                invoice.provider_invoice_id,
                winner_id,
            )
        done = await self.store.record_quarantine(
            invoice,
            next_check_at=self.next_check(invoice, now),
            observation=observation,
            audits=audits,
            now=now,
        )
        if not done:
            await self.store.release(invoice, next_check_at=None)
            p.returned += 1
            return FENCED
        return DecisionKind.DUPLICATE

    async def _issue_failed(
        self,
        p: PassState,
        invoice: Invoice,
        provider_id: str | None,
        decision: Decision | None,
        failed: settlement.IssueFailed,
        now: datetime,
    ) -> str:
        """docs/reconcile.md §11: settle nothing, audit once, reschedule, list for review."""
        observation = decision.observation if decision else "!issue_failed"
        audits: list[AuditRecord] = []
        if observation != invoice.last_provider_status:
            audits.append(
                audit.issue_failed(
                    invoice.id,
                    evidence=decision.evidence if decision else {},
                    provider_id=provider_id,
                    provider_invoice_id=invoice.provider_invoice_id,
                    error=failed.reason,
                )
            )
            logger.bind(invoice_id=invoice.id, provider_id=provider_id).error(
                "invoice {}: the license cannot be encoded, nothing settled: {}", invoice.id, failed.reason
            )
        done = await self.store.record_check(
            invoice,
            now=now,
            next_check_at=self.next_check(invoice, now),
            observation=observation,
            audits=audits,
            checked=decision is not None,
            resolves=review.after_answer(decision, invoice.last_provider_status) if decision else (),
        )
        return DecisionKind.ISSUE_FAILED if done else await self._fenced(p, invoice)

    async def _fenced(self, p: PassState, invoice: Invoice) -> str:
        """Another writer changed the row first: do nothing more, but give back our lease if still ours (the
        pass claims the row again if it is still due)."""
        await self.store.release(invoice, next_check_at=None)
        p.returned += 1
        return FENCED

    def next_check(self, invoice: Invoice, now: datetime) -> datetime:
        return decide.next_check_at(
            self.settings.schedule, invoice.created_at, now, self.rng.uniform(0.9, 1.1)
        )

    def reschedule(self, invoice: Invoice, now: datetime, not_before: datetime | None) -> datetime:
        """The next check after a failure: the schedule's, or later if the provider asked us to wait, but
        never past the invoice's last chance inside `max_age` (docs/reconcile.md §3)."""
        next_at = self.next_check(invoice, now)
        if not_before is None:
            return next_at
        last_chance = invoice.created_at + self.settings.max_age - self.settings.interval
        return max(next_at, min(not_before, last_chance))
