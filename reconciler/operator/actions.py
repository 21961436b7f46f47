"""An operator's actions (docs/cli.md §2.11; docs/operations.md, "An operator's day"): the contract the
command line and the HTTP API both call.

- `Actor`: who acts, as audit rows name them: `Actor.cli(user)` is `cli:<unix user>` (`Actor.current_cli()`
  reads this process's user), `Actor.api_key(key_id)` is `api-key:<key id>`. `actor.name` goes into the
  `actor` column of every audit row the action writes; never a token.
- `ActionRefused(code, message)`: the action does not apply and nothing was written. `code` is one of
  `not-found` (no such invoice, item, task or provider), `not-applicable` (it exists, but the action does not
  apply to it as it is now: already settled, not failed, already paused, the provider does not confirm),
  `conflict` (another instance holds the invoice's lease, or another writer changed it first: try again),
  `invalid` (the input itself: an empty, oversized or control-character reason, an id that no id can be).
  `message` is one clear line, safe to show (it never holds a secret, and untrusted input in it is cut and
  escaped). The API maps not-found to 404, not-applicable and conflict to 409, invalid to 400 / 422; the
  command line exits 1 (refused) or 2 (invalid).
- `Operator`: built from a loaded configuration (`await Operator.open(cfg)`, an async context manager that
  owns the store, the HTTP session and the drivers) or from parts a caller owns (`Operator(store,
  providers, settings, signing_key=...)`). Its actions, each one transaction through the code a pass runs
  (leases, fencing, the settle transaction, audit rows), each audited with the actor:

  ====================================================  ====================================================
  `await op.recheck(invoice_id, actor)` -> `Rechecked`  take the invoice's lease now (any status but settled
                                                        with its license, any age, whatever its schedule),
                                                        ask its provider, decide and record as a pass does;
                                                        `invoice.recheck_requested` is written with the lease
  `await op.settle_flagged(invoice_id, reason, actor)`  settle an expired or invalid invoice its provider
    -> `Settled`                                        reports paid late or underpaid (asked now), license
                                                        issued by the settle transaction, `invoice.settled`
                                                        says `manual`, the actor and the reason
  `await op.dismiss(item_id, reason, actor)`            an open review item dismissed (compare-and-set)
  `await op.retry_task(invoice_id, kind, actor)`        a failed post-settle task pending again: attempts
                                                        from zero, due now; the next pass of any instance
                                                        runs it once (its attempt compare-and-set)
  `await op.pause_provider(provider_id, actor,          persisted in provider_controls: every instance's
    reason=None)` / `resume_provider(...)`              claims leave its invoices (and its tasks) alone
  `await op.decide_now(invoice_id)` -> dict             what a pass would decide now: the dry-run line of
                                                        docs/audit.md §4, nothing written
  ====================================================  ====================================================

A reason is required for settle and dismiss: at most `REASON_MAX` characters once trimmed, no control
characters. Ids are at most `ID_MAX` characters without control characters (anything else cannot exist and is
`invalid`); an id that is well formed but unknown is `not-found`, SQL metacharacters included (every query
takes parameters).
"""

from __future__ import annotations

import asyncio
import getpass
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Literal

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler import app, decide, errors, licenses
from reconciler.audit import Action, by_operator
from reconciler.config import Config
from reconciler.models import Invoice, InvoiceStatus, Unreadable
from reconciler.passes import FENCED, PassState, RunnerSettings
from reconciler.runner import Provider, Runner
from reconciler.safe_text import UNSAFE_TEXT, short_repr
from reconciler.store import base
from reconciler.timeutil import Clock, utcnow
from reconciler.traffic import Failure, Release, Sleep
from reconciler.verdicts import Decided

__all__ = ["ID_MAX", "REASON_MAX", "ActionRefused", "Actor", "Operator", "Rechecked", "Settled"]

#: The longest reason a settle or a dismissal takes, in characters (trimmed).
REASON_MAX = 1000
#: The longest id (invoice, review item, provider, task kind) an action looks up.
ID_MAX = 200
#: How long an action holds the lease of the invoice it works on, at most (the pass's own lease when shorter).
ACTION_LEASE = timedelta(minutes=5)

RefusalCode = Literal["not-found", "not-applicable", "conflict", "invalid"]


class ActionRefused(Exception):
    """The action does not apply; nothing was written. `code`: not-found, not-applicable, conflict or
    invalid; `message`: one line, safe to show."""

    def __init__(self, code: RefusalCode, message: str) -> None:
        super().__init__(message)
        self.code: RefusalCode = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: `name` is what audit rows (and review items closed by a person) record."""

    name: str

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > ID_MAX or UNSAFE_TEXT.search(self.name):
            raise ValueError(f"not an actor name: {short_repr(self.name)}")

    @classmethod
    def api_key(cls, key_id: str) -> Actor:
        """The holder of the API key `key_id` (its id, never its token)."""
        return cls(f"api-key:{key_id}")

    @classmethod
    def cli(cls, unix_user: str) -> Actor:
        return cls(f"cli:{unix_user}")

    @classmethod
    def current_cli(cls) -> Actor:
        """The unix user running this process (its uid when it has no name)."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        return cls.cli(user)


@dataclass(frozen=True, slots=True)
class Rechecked:
    """What a re-check found: the decision kind (docs/audit.md §4; `fenced` when another writer changed the
    row first, a failure kind such as `provider_error` when the provider gave no answer), the invoice's
    status after it, and its license when it has one."""

    invoice_id: str
    decision: str
    status: str
    license_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "invoice_id": self.invoice_id,
            "decision": self.decision,
            "status": self.status,
            "license_id": self.license_id,
        }


@dataclass(frozen=True, slots=True)
class Settled:
    """A manual settle went through: the invoice's license (None for a subscription renewal)."""

    invoice_id: str
    license_id: str | None
    status: str = InvoiceStatus.SETTLED.value

    def to_dict(self) -> dict[str, Any]:
        return {"invoice_id": self.invoice_id, "license_id": self.license_id, "status": self.status}


def check_id(what: str, value: object) -> str:
    """`value` when it can be an id; ActionRefused("invalid") otherwise."""
    if not isinstance(value, str) or not value:
        raise ActionRefused("invalid", f"{what} is required")
    if len(value) > ID_MAX:
        raise ActionRefused("invalid", f"{what} is too long ({len(value)} characters; at most {ID_MAX})")
    if UNSAFE_TEXT.search(value):
        raise ActionRefused("invalid", f"{what} holds control characters: {short_repr(value, 40)}")
    return value


def check_reason(value: object, *, required: bool = True) -> str | None:
    """The reason, trimmed; ActionRefused("invalid") when it is missing (and `required`), longer than
    REASON_MAX characters or holds control characters (a newline included)."""
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        if not required and (value is None or value == ""):
            return None
        raise ActionRefused("invalid", "a reason is required (a short sentence saying why)")
    reason = value.strip()
    if len(reason) > REASON_MAX:
        raise ActionRefused(
            "invalid", f"the reason is too long ({len(reason)} characters; at most {REASON_MAX})"
        )
    if UNSAFE_TEXT.search(reason):
        raise ActionRefused("invalid", "the reason holds control characters (one line of text, please)")
    return reason


class Operator:
    """An operator's actions over one store and the configured providers (see the module docstring)."""

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
        session: aiohttp.ClientSession | None = None,
        owns_store: bool = False,
    ) -> None:
        """`signing_key` may be None for an operator that never settles (`recheck` and `settle_flagged` then
        raise SigningKeyError). `session` and, with `owns_store`, the store are closed by `close()`."""
        self.store = store
        self.settings = settings
        self.clock = clock
        self.runner = Runner(
            store,
            providers,
            settings,
            signing_key=signing_key,
            clock=clock,
            owner=owner,
            rng=rng,
            sleep=sleep,
        )
        self._session = session
        self._owns_store = owns_store

    @classmethod
    async def open(
        cls, cfg: Config, *, signing_key: bool = True, clock: Clock = utcnow, owner: str | None = None
    ) -> Operator:
        """The configured store (checked at this release's schema version), drivers and signing key (unless
        not `signing_key`); ConfigError, DriverLoadError, SigningKeyError or SchemaError (exit 2) first."""
        loaded = app.load_drivers(cfg)
        key = licenses.load_signing_key(cfg.license.signing_key_file) if signing_key else None
        store = await app.open_store(cfg)
        try:
            await store.require_schema()
            session = app.http_session(loaded)
            try:
                providers = app.build_providers(loaded, session)
            except BaseException:
                await session.close()
                raise
        except BaseException:
            await store.close()
            raise
        return cls(
            store,
            providers,
            app.runner_settings(cfg),
            signing_key=key,
            clock=clock,
            owner=owner,
            session=session,
            owns_store=True,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._owns_store:
            self._owns_store = False
            await self.store.close()

    async def __aenter__(self) -> Operator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- invoices ---------------------------------------------------------------------------------------------
    async def recheck(self, invoice_id: str, actor: Actor) -> Rechecked:
        """Re-check one invoice now, recorded as a pass would record it."""
        self._need_key()
        row = await self._invoice(invoice_id)
        if isinstance(row, Invoice) and row.status is InvoiceStatus.SETTLED and row.has_license:
            raise ActionRefused(
                "not-applicable",
                f"invoice {row.id} is settled with its license: there is nothing to re-check",
            )
        await self._refuse_paused(row)
        details = {
            "provider_id": row.payment_provider_id or self.settings.default_provider,
            "provider_invoice_id": row.provider_invoice_id,
            "raw_status": None,
        }
        requested = by_operator(Action.INVOICE_RECHECK_REQUESTED, "invoice", row.id, actor.name, details)
        leased = await self._claim(row.id, audits=(requested,))
        p = self.runner.one_invoice()
        async with self._holding(p, leased):
            verdict = await self.runner.classify(
                p, leased, self._lease_until(), await self.runner.duplicates([leased])
            )
            kind = await self.runner.record(p, verdict)
        return await self._rechecked(row.id, kind)

    async def settle_flagged(self, invoice_id: str, reason: str, actor: Actor) -> Settled:
        """Settle an expired or invalid invoice its provider reports paid late or underpaid."""
        why = check_reason(reason)
        assert why is not None
        self._need_key()
        row = await self._invoice(invoice_id)
        if isinstance(row, Unreadable):
            raise ActionRefused(
                "not-applicable",
                f"invoice {row.label} cannot be read ({row.column} {row.reason}): fix the row",
            )
        await self._refuse_unsettleable(row)
        provider = self._provider(row)
        await self._refuse_paused(row)
        leased = await self._claim(row.id)
        if not isinstance(leased, Invoice):  # readable a moment ago
            await self.store.release(leased, next_check_at=None)
            raise ActionRefused("conflict", f"invoice {row.id} changed meanwhile: look again and retry")
        await self._refuse_unsettleable(leased, release=True)
        p = self.runner.one_invoice()
        async with self._holding(p, leased):
            answer = await self.runner.ask(p, provider, leased, self._lease_until())
            if isinstance(answer, Failure | Release):
                message = answer.message if isinstance(answer, Failure) else "the lease ran out"
                await self._release(p, leased)
                raise ActionRefused(
                    "not-applicable", f"provider {provider.id} could not confirm the payment now: {message}"
                )
            decision = decide.manual_settle(
                leased, answer, provider_id=provider.id, actor=actor.name, reason=why
            )
            if isinstance(decision, str):
                await self._release(p, leased)
                raise ActionRefused("not-applicable", decision)
            verdict = await self.runner.planned(p, leased, provider, decision)
            kind = await self.runner.record(p, verdict)
        if not isinstance(verdict, Decided) or kind not in (
            decide.DecisionKind.SETTLE,
            decide.DecisionKind.RENEW,
        ):
            after = await self.store.get_invoice(row.id)
            if isinstance(after, Invoice) and after.status is InvoiceStatus.SETTLED:
                raise ActionRefused("conflict", f"invoice {row.id} was settled meanwhile by another writer")
            if kind == FENCED:
                raise ActionRefused("conflict", f"invoice {row.id} changed meanwhile: look again and retry")
            raise ActionRefused(
                "not-applicable",
                f"invoice {row.id} was not settled: {kind} (see `reconciler explain {row.id}`)",
            )
        license_row = await self.store.license_of(row.id)
        return Settled(row.id, str(license_row["id"]) if license_row else None)

    async def decide_now(self, invoice_id: str) -> dict[str, Any]:
        """What a pass would decide about the invoice now (asks its provider, writes nothing): the dry-run
        line of docs/audit.md §4. A paused provider is not asked: the decision is `paused`."""
        row = await self._invoice(invoice_id)
        paused = await self._paused_provider(row)
        if paused is not None:
            return {
                "invoice_id": row.id if isinstance(row, Invoice) else row.label,
                "provider_id": paused,
                "status": row.status.value if isinstance(row, Invoice) else None,
                "raw_status": None,
                "raw_additional_status": None,
                "decision": "paused",
                "evidence": {"reason": f"provider {paused} is paused: its invoices are not checked"},
            }
        lines: list[dict[str, Any]] = []
        await self.runner.dry_run(lines.append, only=row)
        return lines[0]

    # -- review items, tasks, providers ---------------------------------------------------------------------
    async def dismiss(self, item_id: str, reason: str, actor: Actor) -> None:
        """Dismiss an open review item (compare-and-set open -> dismissed)."""
        check_id("review item id", item_id)
        why = check_reason(reason)
        assert why is not None
        item = await self.store.review_item(item_id)
        if item is None:
            raise ActionRefused("not-found", f"no review item with id {short_repr(item_id)}")
        if item.status != "open":
            raise ActionRefused(
                "not-applicable", f"review item {item.id} is {item.status} already (by {item.closed_by})"
            )
        invoice = await self.store.get_invoice(item.invoice_id)
        details = {
            "provider_id": invoice.payment_provider_id if invoice is not None else None,
            "provider_invoice_id": invoice.provider_invoice_id if invoice is not None else None,
            "raw_status": None,
            "item_id": item.id,
            "kind": item.kind,
            "reason": why,
        }
        record = by_operator(Action.REVIEW_DISMISSED, "invoice", item.invoice_id, actor.name, details)
        closed = await self.store.close_review_item(
            item.id, status="dismissed", closed_by=actor.name, reason=why, now=self.clock(), audits=(record,)
        )
        if not closed:
            raise ActionRefused("conflict", f"review item {item.id} was closed meanwhile")

    async def retry_task(self, invoice_id: str, kind: str, actor: Actor) -> None:
        """Queue a failed post-settle task again; the next pass of any instance runs it once."""
        check_id("invoice id", invoice_id)
        check_id("task kind", kind)
        status = await self.store.task_status(invoice_id, kind)
        if status is None:
            raise ActionRefused(
                "not-found", f"invoice {short_repr(invoice_id)} has no post-settle task {short_repr(kind)}"
            )
        if status != "failed":
            raise ActionRefused(
                "not-applicable",
                f"post-settle task {kind} of invoice {invoice_id} is {status}: only a failed task is retried",
            )
        invoice = await self.store.get_invoice(invoice_id)
        details = {
            "provider_id": invoice.payment_provider_id if invoice is not None else None,
            "provider_invoice_id": invoice.provider_invoice_id if invoice is not None else None,
            "raw_status": None,
            "kind": kind,
        }
        record = by_operator(Action.POST_SETTLE_RETRY_REQUESTED, "invoice", invoice_id, actor.name, details)
        if not await self.store.retry_task(invoice_id, kind, now=self.clock(), audits=(record,)):
            raise ActionRefused(
                "conflict", f"post-settle task {kind} of invoice {invoice_id} changed meanwhile"
            )

    async def pause_provider(self, provider_id: str, actor: Actor, reason: str | None = None) -> None:
        """Pause a configured provider: no instance fetches its invoices or runs its tasks until resumed."""
        await self._set_paused(provider_id, True, actor, reason)

    async def resume_provider(self, provider_id: str, actor: Actor, reason: str | None = None) -> None:
        await self._set_paused(provider_id, False, actor, reason)

    async def paused(self) -> list[base.ProviderControl]:
        """The providers paused now."""
        return [c for c in await self.store.provider_controls() if c.paused]

    async def _set_paused(self, provider_id: str, paused: bool, actor: Actor, reason: str | None) -> None:
        check_id("provider id", provider_id)
        why = check_reason(reason, required=False)
        known = {c.provider_id: c for c in await self.store.provider_controls()}
        if provider_id not in self.runner.providers and provider_id not in known:
            configured = ", ".join(sorted(self.runner.providers)) or "none"
            raise ActionRefused(
                "not-found",
                f"provider {short_repr(provider_id)} is not configured (configured: {configured})",
            )
        action = Action.PROVIDER_PAUSED if paused else Action.PROVIDER_RESUMED
        record = by_operator(action, "provider", provider_id, actor.name, {"reason": why})
        changed = await self.store.set_paused(
            provider_id, paused, actor=actor.name, reason=why, now=self.clock(), audits=(record,)
        )
        if not changed:
            state = "paused" if paused else "not paused"
            raise ActionRefused("not-applicable", f"provider {provider_id} is {state} already")

    # -- helpers ----------------------------------------------------------------------------------------------
    def _need_key(self) -> None:
        if self.runner.signing_key is None:
            raise errors.SigningKeyError("this action may issue a license: it needs the license signing key")

    async def _invoice(self, invoice_id: str) -> base.Row:
        check_id("invoice id", invoice_id)
        row = await self.store.get_invoice(invoice_id)
        if row is None:
            raise ActionRefused("not-found", f"no invoice with id {short_repr(invoice_id)}")
        return row

    def _provider(self, invoice: Invoice) -> Provider:
        provider_id = invoice.payment_provider_id or self.settings.default_provider
        if provider_id is None:
            raise ActionRefused(
                "not-applicable",
                f"invoice {invoice.id} has no payment_provider_id and no default_provider is set",
            )
        provider = self.runner.providers.get(provider_id)
        if provider is None:
            raise ActionRefused(
                "not-applicable", f"provider {provider_id!r} of invoice {invoice.id} is not configured"
            )
        return provider

    async def _paused_provider(self, row: base.Row) -> str | None:
        provider_id = row.payment_provider_id or self.settings.default_provider
        if provider_id is None:
            return None
        paused = {c.provider_id for c in await self.store.provider_controls() if c.paused}
        return provider_id if provider_id in paused else None

    async def _refuse_paused(self, row: base.Row) -> None:
        paused = await self._paused_provider(row)
        if paused is not None:
            raise ActionRefused(
                "not-applicable",
                f"provider {paused} is paused: resume it first (`reconciler provider resume {paused}`)",
            )

    async def _refuse_unsettleable(self, invoice: Invoice, *, release: bool = False) -> None:
        refusal: str | None = None
        if invoice.status is InvoiceStatus.SETTLED:
            license_row = await self.store.license_of(invoice.id)
            held = f" (license {license_row['id']})" if license_row else ""
            refusal = f"invoice {invoice.id} is already settled{held}"
        elif invoice.status not in (InvoiceStatus.EXPIRED, InvoiceStatus.INVALID):
            refusal = (
                f"invoice {invoice.id} is {invoice.status.value}: only an expired or invalid invoice is settled "
                "by hand (a pending one is settled by a pass when paid)"
            )
        if refusal is not None:
            if release:
                await self.store.release(invoice, next_check_at=None)
            raise ActionRefused("not-applicable", refusal)

    async def _claim(self, invoice_id: str, *, audits: tuple[Any, ...] = ()) -> base.Row:
        leased = await self.store.claim_invoice(
            invoice_id, owner=self.runner.owner, now=self.clock(), lease=self._lease(), audits=audits
        )
        if leased is None:
            if await self.store.get_invoice(invoice_id) is None:
                raise ActionRefused("not-found", f"no invoice with id {short_repr(invoice_id)}")
            raise ActionRefused(
                "conflict",
                f"invoice {invoice_id} is being worked on by an instance right now: try again shortly",
            )
        return leased

    def _lease(self) -> timedelta:
        return min(self.settings.lease, ACTION_LEASE)

    def _lease_until(self) -> datetime:
        return self.clock() + self._lease()

    async def _release(self, p: PassState, row: base.Row) -> None:
        p.held.pop(row.id, None)
        await self.store.release(row, next_check_at=None)

    def _holding(self, p: PassState, row: base.Row) -> _Held:
        return _Held(self, p, row)

    async def _rechecked(self, invoice_id: str, kind: str) -> Rechecked:
        after = await self.store.get_invoice(invoice_id)
        status = after.status.value if isinstance(after, Invoice) else "unreadable"
        license_row = await self.store.license_of(invoice_id)
        return Rechecked(invoice_id, str(kind), status, str(license_row["id"]) if license_row else None)


class _Held:
    """While an action works on a leased row: whatever ends it early (a crash, a cancellation) gives the lease
    back, like a pass's end releases what it still holds."""

    def __init__(self, operator: Operator, p: PassState, row: base.Row) -> None:
        self.operator, self.p, self.row = operator, p, row

    async def __aenter__(self) -> None:
        self.p.held[self.row.id] = self.row

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self.p.held.pop(self.row.id, None) is not None:
            await asyncio.shield(self.operator.store.release(self.row, next_check_at=None))
