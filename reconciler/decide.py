"""The decision about one invoice: a pure function of the row, the provider's answer and the policy
(docs/reconcile.md, docs/statuses.md).

No I/O and no clock: the runner passes everything in and applies the returned `Decision` through the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from reconciler import audit
from reconciler.audit import Action
from reconciler.driver_api import ProviderStatus, Snapshot
from reconciler.models import AuditRecord, Invoice, InvoiceStatus, PaymentRow

PaidLatePolicy = Literal["flag", "settle"]

NOT_FOUND_OBSERVATION = "!not_found"
BAD_RESPONSE_OBSERVATION = "!bad_response"


class DecisionKind(StrEnum):
    """Names used by the summary line, metrics and the dry run (docs/audit.md §4)."""

    SETTLE = "settle"
    EXPIRE = "expire"
    INVALIDATE = "invalidate"
    PAID_LATE_FLAG = "paid_late_flag"
    RECOVER = "recover"
    RENEW = "renew"
    NO_CHANGE = "no_change"
    SKIPPED = "skipped"
    PROVIDER_ERROR = "provider_error"
    NOT_FOUND = "not_found"
    BAD_RESPONSE = "bad_response"
    ISSUE_FAILED = "issue_failed"
    UNREADABLE = "unreadable"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class NotFound:
    """The provider says it does not know the invoice."""

    message: str = "not found"


@dataclass(frozen=True, slots=True)
class BadResponse:
    """The provider answered with something the driver could not read."""

    message: str = "unreadable answer"


Answer = Snapshot | NotFound | BadResponse


@dataclass(frozen=True, slots=True)
class Drift:
    """What the settle-amount tripwire saw (docs/reconcile.md §14)."""

    expected_amount_sats: int
    provider_amount_sats: int
    provider_paid_sats: int | None
    currency: str | None


@dataclass(frozen=True, slots=True)
class Decision:
    kind: DecisionKind
    new_status: InvoiceStatus | None
    observation: str | None
    audits: tuple[AuditRecord, ...] = ()
    drift: Drift | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    #: who decided: `reconciler`, or the operator of a manual settle (`manual_settle`)
    actor: str = "reconciler"

    @property
    def settles(self) -> bool:
        return self.new_status is InvoiceStatus.SETTLED


def tripwire(expected_amount_sats: int, snapshot: Snapshot) -> Drift | None:
    """Drift between our amount and the provider's sats; None when there is none or no opinion (fiat, unparseable)."""
    provider = snapshot.amount_sats
    if provider is None or provider <= 0 or expected_amount_sats <= 0:
        return None
    paid = snapshot.paid_sats
    if provider == expected_amount_sats and (paid is None or paid >= expected_amount_sats):
        return None
    return Drift(expected_amount_sats, provider, paid, snapshot.currency)


def evidence(invoice: Invoice, provider_id: str, answer: Answer) -> dict[str, Any]:
    """The facts every invoice audit row and dry-run line carries (docs/audit.md §1)."""
    facts: dict[str, Any] = {
        "provider_id": provider_id,
        "provider_invoice_id": invoice.provider_invoice_id,
        "expected_amount_sats": invoice.amount_sats,
    }
    if isinstance(answer, Snapshot):
        facts |= {
            "raw_status": answer.raw_status,
            "raw_additional_status": answer.raw_additional_status,
            "status": answer.status.value,
            "currency": answer.currency,
            "provider_amount_sats": answer.amount_sats,
            "provider_paid_sats": answer.paid_sats,
        }
        if answer.amount_sats is None and answer.amount_raw is not None:
            facts["provider_amount_raw"] = answer.amount_raw  # what it was, when it was no usable amount
        flags = [
            name
            for name in ("paid_late", "partially_paid", "overpaid", "manually_marked")
            if getattr(answer, name)
        ]
        if flags:
            facts["flags"] = flags
    else:
        facts |= {
            "raw_status": observation_of(answer),
            "raw_additional_status": None,
            "error": answer.message,
        }
    return facts


def observation_of(answer: Answer) -> str:
    """What `last_provider_status` records for this answer (docs/audit.md §3)."""
    if isinstance(answer, NotFound):
        return NOT_FOUND_OBSERVATION
    if isinstance(answer, BadResponse):
        return BAD_RESPONSE_OBSERVATION
    return answer.observation


def decide(invoice: Invoice, answer: Answer, *, provider_id: str, paid_late: PaidLatePolicy) -> Decision:
    """What to do with `invoice` given its provider's `answer` (docs/reconcile.md §3–§9, §14)."""
    observation = observation_of(answer)
    facts = evidence(invoice, provider_id, answer)
    # The once rule: an observation audit is written only when the observation is new for this invoice.
    new_observation = observation != invoice.last_provider_status

    def note(action: Action, **extra: Any) -> AuditRecord:
        return audit.on_invoice(action, invoice.id, facts, **extra)

    def observed(action: Action, **extra: Any) -> tuple[AuditRecord, ...]:
        return (note(action, **extra),) if new_observation else ()

    if invoice.status is InvoiceStatus.SETTLED:
        # A settled invoice never goes back; recovery candidates never reach here (no provider call).
        return Decision(DecisionKind.NO_CHANGE, None, observation, (), None, facts)
    if isinstance(answer, NotFound):
        return Decision(
            DecisionKind.NOT_FOUND,
            None,
            observation,
            observed(Action.INVOICE_PROVIDER_NOT_FOUND),
            None,
            facts,
        )
    if isinstance(answer, BadResponse):
        return Decision(
            DecisionKind.BAD_RESPONSE,
            None,
            observation,
            observed(Action.INVOICE_BAD_PROVIDER_RESPONSE),
            None,
            facts,
        )

    snapshot = answer
    status = snapshot.status
    pending = invoice.status is InvoiceStatus.PENDING

    if status is ProviderStatus.SETTLED:
        return _settle(invoice, snapshot, observation, facts, (note(Action.INVOICE_SETTLED),))

    if status is ProviderStatus.EXPIRED and snapshot.paid_late:
        if paid_late == "settle":
            audits = (
                *observed(Action.INVOICE_PAID_LATE, policy="settle"),
                note(Action.INVOICE_SETTLED, paid_late=True),
            )
            return _settle(invoice, snapshot, observation, facts, audits)
        flag = observed(Action.INVOICE_PAID_LATE, policy="flag")
        if invoice.status is InvoiceStatus.EXPIRED:
            # already expired and already flagged: a re-check that writes nothing is no change
            kind = DecisionKind.PAID_LATE_FLAG if flag else DecisionKind.NO_CHANGE
            return Decision(kind, None, observation, flag, None, facts)
        return Decision(
            DecisionKind.PAID_LATE_FLAG,
            InvoiceStatus.EXPIRED,
            observation,
            (note(Action.INVOICE_EXPIRED), *flag),
            None,
            facts,
        )

    if pending and status is ProviderStatus.EXPIRED:
        underpaid = observed(Action.INVOICE_UNDERPAID) if snapshot.partially_paid else ()
        return Decision(
            DecisionKind.EXPIRE,
            InvoiceStatus.EXPIRED,
            observation,
            (note(Action.INVOICE_EXPIRED), *underpaid),
            None,
            facts,
        )

    if pending and status is ProviderStatus.INVALID:
        return Decision(
            DecisionKind.INVALIDATE,
            InvoiceStatus.INVALID,
            observation,
            (note(Action.INVOICE_INVALID),),
            None,
            facts,
        )

    notes: tuple[AuditRecord, ...] = ()
    if status is ProviderStatus.REFUNDED:
        notes = observed(Action.INVOICE_REFUNDED)
    elif status is ProviderStatus.UNKNOWN:
        notes = observed(Action.INVOICE_UNKNOWN_STATUS)
    elif status is ProviderStatus.EXPIRED and snapshot.partially_paid:
        notes = observed(Action.INVOICE_UNDERPAID)
    return Decision(DecisionKind.NO_CHANGE, None, observation, notes, None, facts)


def _settle(
    invoice: Invoice,
    snapshot: Snapshot,
    observation: str,
    facts: dict[str, Any],
    audits: tuple[AuditRecord, ...],
) -> Decision:
    drift = tripwire(invoice.amount_sats, snapshot)
    if drift is not None:
        audits = (
            *audits,
            audit.amount_mismatch(
                invoice.id,
                facts,
                expected_amount_sats=drift.expected_amount_sats,
                provider_amount_sats=drift.provider_amount_sats,
                provider_paid_sats=drift.provider_paid_sats,
                currency=drift.currency,
            ),
        )
    kind = DecisionKind.RENEW if invoice.subscription_id is not None else DecisionKind.SETTLE
    return Decision(kind, InvoiceStatus.SETTLED, observation, audits, drift, facts)


def payment_winner(rows: Sequence[PaymentRow]) -> PaymentRow | None:
    """The one row of a payment the reconciler may settle and license: the one already licensed, else
    the one already settled, else the oldest by (created_at, id). Every other row is a duplicate."""
    return min(
        rows,
        key=lambda row: (not row.has_license, row.status != "settled", row.created_at, row.id),
        default=None,
    )


def duplicate_observation(winner_id: str) -> str:
    """`last_provider_status` of a duplicate: written again (and audited again) only if the winner changes."""
    return f"!duplicate:{winner_id}"


def schedule_step(schedule: tuple[timedelta, ...], age: timedelta) -> timedelta:
    """The re-check step for an invoice of `age` (docs/reconcile.md §10): under 1 h, 6 h, 24 h, then the
    last."""
    for limit, step in zip(_AGE_LIMITS, schedule, strict=False):
        if age < limit:
            return step
    return schedule[-1]


def next_check_at(
    schedule: tuple[timedelta, ...], created_at: datetime, now: datetime, jitter: float
) -> datetime:
    """`now` plus the step for the invoice's age, scaled by `jitter` (the runner draws it in [0.9, 1.1])."""
    return now + schedule_step(schedule, now - created_at) * jitter


_AGE_LIMITS = (timedelta(hours=1), timedelta(hours=6), timedelta(hours=24))


def manual_settle(
    invoice: Invoice, answer: Answer, *, provider_id: str, actor: str, reason: str
) -> Decision | str:
    """An operator's settle of an `expired` or `invalid` invoice (docs/operations.md): a settling decision
    when the provider's `answer` reports it paid late or underpaid, else why it is refused. The decision
    settles exactly as a pass's would; its `invoice.settled` row says `manual`, who and why (written with
    the operator as its actor), and no `invoice.amount_mismatch` is added: the operator accepts the amounts
    the evidence shows."""
    if invoice.status not in (InvoiceStatus.EXPIRED, InvoiceStatus.INVALID):
        return f"invoice {invoice.id} is {invoice.status.value}: only an expired or invalid invoice is settled by hand"
    if not isinstance(answer, Snapshot):
        return f"the provider could not confirm the payment: {observation_of(answer)} ({answer.message})"
    late = answer.paid_late
    underpaid = answer.partially_paid
    if answer.status not in (ProviderStatus.EXPIRED, ProviderStatus.INVALID) or not (late or underpaid):
        return (
            f"the provider reports {answer.observation} ({answer.status.value}), neither paid late nor "
            "underpaid: nothing to settle by hand (`reconciler recheck` records what a pass would)"
        )
    observation = answer.observation
    facts = evidence(invoice, provider_id, answer)
    settled = audit.on_invoice(
        Action.INVOICE_SETTLED,
        invoice.id,
        facts,
        manual=True,
        actor=actor,
        reason=reason,
        paid_late=late,
        underpaid=underpaid,
    )
    kind = DecisionKind.RENEW if invoice.subscription_id is not None else DecisionKind.SETTLE
    return Decision(
        kind,
        InvoiceStatus.SETTLED,
        observation,
        (AuditRecord(settled.action, settled.target_kind, settled.target_id, settled.details, actor),),
        None,
        facts,
        actor,
    )
