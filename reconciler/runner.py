"""The reconcile pass (docs/reconcile.md): claim -> classify (ask, decide, plan) -> record.

The only code that awaits both the store and the drivers (the post-settle worker and the dry run do too,
through the same gates). Every claimed row leaves the pass recorded or released: a row that cannot be read
is quarantined (docs/reconcile.md §11), a second row of one payment is held back as a duplicate, a provider's
trouble reschedules only its own invoices, and whatever ends the pass (a stop, a store failure, a bug)
releases the leases it still holds. The dry run classifies through the same code and writes nothing.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from reconciler import decide, dry_run, errors, ids, licenses, settlement
from reconciler.breaker import Breaker, CircuitState
from reconciler.decide import Decision
from reconciler.models import Invoice, InvoiceStatus, Policy, Unreadable, UnreadablePolicy
from reconciler.passes import (
    FENCED,
    KINDS,
    RELEASED,
    Observer,
    PassState,
    PassSummary,
    RunnerSettings,
)
from reconciler.post_settle import PostSettleWorker
from reconciler.record import Recorder
from reconciler.store import base
from reconciler.timeutil import Clock, utcnow
from reconciler.traffic import Failure, Provider, ProviderGate, Release, Sleep
from reconciler.verdicts import Decided, Duplicate, Quarantine, Skip, Unanswered, Verdict

__all__ = [  # the runner's interface: what the daemon, the CLI and metrics import from here
    "FENCED",
    "KINDS",
    "RELEASED",
    "Observer",
    "PassSummary",
    "Provider",
    "Runner",
    "RunnerSettings",
    "instance_owner",
]

#: A pass running longer than this logs a progress line this often.
PROGRESS_EVERY = 10.0

#: The most claimed batches a pass holds at once: one being decided, the next claimed as soon as fewer than a
#: batch are left to decide, and the decided ones waiting for their write group.
IN_FLIGHT_BATCHES = 3


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
        """`signing_key` may be None for a runner that only dry-runs (`run_pass` refuses to start)."""
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
        #: each provider's outage breaker: kept across passes, like `refused`
        self.breakers: dict[str, Breaker] = {}
        #: providers an operator paused, as the last pass began (the claims themselves skip them)
        self.paused: tuple[str, ...] = ()
        for provider in self.providers.values():
            self._breaker(provider)
        #: invoices of a pass not yet decided: their writes may still join the groups waiting to be written
        self._deciding = 0
        #: set when an invoice of the pass is decided or done: the claim loop may claim again
        self._changed = asyncio.Event()
        self._recorder = Recorder(store, settings, clock=clock, rng=self.rng, company=lambda: self._deciding)
        self._pass = PassState.starting(self.started_at)

    # -- the pass -------------------------------------------------------------------------------------------
    async def run_pass(self, *, stop: asyncio.Event | None = None) -> PassSummary:
        """Claim and settle every due candidate until nothing is in flight and a claim returns nothing (or
        `stop` is set). However the pass ends, the leases it still holds are released."""
        if self.signing_key is None:
            raise errors.SigningKeyError("a pass that writes needs the license signing key")
        p = self.begin()
        self.paused = tuple(c.provider_id for c in await self.store.provider_controls() if c.paused)
        await self.store.upsert_instance(
            base.InstanceRow(self.owner, socket.gethostname(), os.getpid(), self.started_at, p.started_at)
        )
        progress = asyncio.create_task(self._progress(p))
        # a pass cancelled mid-way may leave tasks that never ran to count themselves decided
        self._deciding = 0
        try:
            async with asyncio.TaskGroup() as group:
                await self._claim_and_reconcile(p, group, stop)
            if stop is None or not stop.is_set():
                worker = PostSettleWorker(
                    self.store,
                    self.providers,
                    self.settings,
                    clock=self.clock,
                    gate=lambda provider: self._gate(p, provider),
                    observer=self.observer,
                    beat=self.beat,
                )
                await worker.run(p.summary.tasks)
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
        summary = self.finish(p)
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
        self, p: PassState, group: asyncio.TaskGroup, stop: asyncio.Event | None
    ) -> None:
        """Claim the next batch as soon as fewer than a batch of the claimed invoices are still being decided
        (asked and judged), so the next claim and its provider calls overlap the current batch's answers and
        writes, and a slow answer never idles the rest; at most `IN_FLIGHT_BATCHES` batches are held at once
        (decided ones wait for their write group). The pass ends when a claim returns nothing while nothing
        is in flight (a row released untouched meanwhile is claimed again)."""
        in_flight = 0
        batch_size = self.settings.batch_size
        self._changed = changed = asyncio.Event()

        def one_done(_: object) -> None:
            nonlocal in_flight
            in_flight -= 1
            changed.set()

        async def next_change() -> None:
            changed.clear()
            await changed.wait()

        await self._find_recovery(p)
        while stop is None or not stop.is_set():
            if self._deciding >= batch_size or in_flight > (IN_FLIGHT_BATCHES - 1) * batch_size:
                await next_change()
                continue
            batch = await self.store.claim(
                owner=self.owner,
                pass_start=p.started_at,
                now=self.clock(),
                lease=self.settings.lease,
                max_age=self.settings.max_age,
                batch_size=self.settings.batch_size,
                default_provider=self.settings.default_provider,
                recovery=p.recovery,
            )
            if p.recovery and batch:
                taken = {row.id for row in batch}
                p.recovery = [invoice_id for invoice_id in p.recovery if invoice_id not in taken]
            if not batch and p.recovery_cut:
                await self._find_recovery(p)
                continue
            if not batch:
                returned = p.returned
                while in_flight and p.returned == returned and (stop is None or not stop.is_set()):
                    await next_change()
                if p.returned == returned:
                    return
                continue
            p.summary.claimed += len(batch)
            self.beat()
            lease_until = self.clock() + self.settings.lease
            p.held.update((row.id, row) for row in batch)
            winners = await self.duplicates(batch)
            for row in batch:
                task = group.create_task(self._one(p, row, lease_until, winners))
                in_flight += 1
                self._deciding += 1
                task.add_done_callback(one_done)

    async def _find_recovery(self, p: PassState) -> None:
        """The settled invoices without a license, looked for as the pass begins (and again when the first
        look was cut and nothing else is left): finding them walks the window's settled invoices, too dear
        for every claim. One settled meanwhile is the next pass's."""
        p.recovery = await self.store.recovery_candidates(
            pass_start=p.started_at,
            now=self.clock(),
            max_age=self.settings.max_age,
            batch_size=self.settings.batch_size,
            default_provider=self.settings.default_provider,
        )
        p.recovery_cut = len(p.recovery) >= self.settings.batch_size

    async def _one(
        self, p: PassState, row: base.Row, lease_until: datetime, winners: Mapping[str, str]
    ) -> None:
        """Counted in `_deciding` from its creation until it is decided (or cancelled before it is)."""
        try:
            verdict = await self.classify(p, row, lease_until, winners)
        finally:
            self._deciding -= 1
            self._changed.set()
            if not self._deciding:
                self._recorder.hurry()
        kind = await self._recorder.record(p, verdict)
        # Only a recorded row leaves `held`: a cancelled one is still ours to release.
        p.held.pop(row.id, None)
        p.done += 1
        p.summary.count(verdict.provider_id, kind)
        self.observer.decision(verdict.provider_id, kind)
        self.beat()

    async def dry_run(
        self, emit: Callable[[dict[str, Any]], None], *, only: base.Row | None = None
    ) -> PassSummary:
        """Every provider read of a pass and no write (docs/reconcile.md §12); `emit` gets one line per
        decision."""
        return await dry_run.dry_run(self, self.store, self.settings, emit, clock=self.clock, only=only)

    def begin(self) -> PassState:
        self._pass = PassState.starting(self.clock())
        return self._pass

    def finish(self, p: PassState) -> PassSummary:
        summary = p.finish(self.clock(), self.breakers)
        self.observer.pass_finished(summary, sorted(self.providers), p.circuits_open(set(self.refused)))
        self.beat()
        return summary

    def beat(self) -> None:
        """Record progress for the watchdog and /healthz."""
        self.heartbeat = asyncio.get_running_loop().time()

    async def _progress(self, p: PassState) -> None:
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

    # -- one invoice, for an operator's action (reconciler/operator/actions.py) --------------------------
    def one_invoice(self) -> PassState:
        """A pass state of its own for an action on one invoice: classified, asked and recorded by the same
        code as a pass, without touching the state of this runner's passes."""
        return PassState.starting(self.clock())

    async def ask(
        self, p: PassState, provider: Provider, invoice: Invoice, lease_until: datetime | None
    ) -> decide.Answer | Failure | Release:
        """Ask `provider` about `invoice` through its gate (retries, rate, breaker), as a pass does."""
        return await self._gate(p, provider).ask(
            invoice.provider_invoice_id, invoice_id=invoice.id, lease_until=lease_until
        )

    async def planned(
        self, p: PassState, invoice: Invoice, provider: Provider, decision: Decision
    ) -> Decided | Quarantine:
        """The verdict of a settling `decision`: its settle plan (license, subscription, tasks)."""
        return await self._planned(p, invoice, provider.id, provider, decision)

    async def record(self, p: PassState, verdict: Verdict) -> str:
        """Write what `verdict` calls for, as a pass does; the kind the invoice leaves with."""
        return await self._recorder.record(p, verdict)

    # -- classification: what one row calls for ---------------------------------------------------------
    async def classify(
        self, p: PassState, row: base.Row, lease_until: datetime | None, winners: Mapping[str, str]
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
            invoice.provider_invoice_id,
            invoice_id=invoice.id,
            lease_until=lease_until,
            created_at=invoice.created_at,
        )
        if isinstance(answer, Failure | Release):
            return Unanswered(invoice, provider.id, answer)
        decision = decide.decide(invoice, answer, provider_id=provider.id, paid_late=self.settings.paid_late)
        if not decision.settles:
            return Decided(invoice, provider.id, decision)
        return await self._planned(p, invoice, provider.id, provider, decision)

    async def _planned(
        self,
        p: PassState,
        invoice: Invoice,
        provider_id: str | None,
        provider: Provider | None,
        decision: Decision | None,
    ) -> Decided | Quarantine:
        policy: Policy | UnreadablePolicy | None = None
        if invoice.subscription_id is None:
            key = (invoice.product_id, invoice.policy_id)
            if key not in p.policies:  # storefront configuration, read once per pass
                p.policies[key] = await self.store.policies_for(invoice)
            policy = licenses.choose_policy(*p.policies[key])
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

    def _provider_for(self, p: PassState, invoice: Invoice, provider_id: str | None) -> Provider | None:
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

    async def duplicates(self, batch: Sequence[base.Row]) -> dict[str, str]:
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

    # -- provider traffic -----------------------------------------------------------------------------------
    def _gate(self, p: PassState, provider: Provider) -> ProviderGate:
        gate = p.gates.get(provider.id)
        if gate is None:
            gate = p.gates[provider.id] = ProviderGate(
                provider,
                clock=self.clock,
                sleep=self.sleep,
                rng=self.rng,
                on_request=self.observer.request,
                on_credentials=self._credentials,
                breaker=self._breaker(provider),
            )
        return gate

    def _breaker(self, provider: Provider) -> Breaker:
        breaker = self.breakers.get(provider.id)
        if breaker is None:
            breaker = self.breakers[provider.id] = Breaker.for_provider(
                provider, clock=self.clock, on_change=self._circuit_changed
            )
        return breaker

    def _circuit_changed(self, provider_id: str, state: CircuitState) -> None:
        self.observer.breaker(provider_id, state.value)

    def circuits(self) -> dict[str, str]:
        """Why each provider whose outage circuit is not closed is held back (`STATUS=`)."""
        held = {pid: breaker.reason() for pid, breaker in sorted(self.breakers.items())}
        return {pid: reason for pid, reason in held.items() if reason is not None}

    def _credentials(self, provider_id: str, refused: str | None) -> None:
        if refused is None:
            if self.refused.pop(provider_id, None) is not None:
                logger.info("provider {}: credentials accepted again", provider_id)
                self.observer.credentials(provider_id, None)
        elif self.refused.get(provider_id) != refused:
            self.refused[provider_id] = refused
            self.observer.credentials(provider_id, refused)

    async def _release_held(self, p: PassState) -> None:
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


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
