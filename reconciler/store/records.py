"""The frozen values the store takes and hands back, besides the models (reconciler/models.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from reconciler.driver_api import PaymentProfile
from reconciler.models import AuditRecord, Invoice, LicenseDraft, Resolution, SubscriptionDraft

#: `reconciler_instances` rows whose last pass is older than this are deleted by later passes.
INSTANCE_RETENTION = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class PaymentKey:
    """One payment at a provider: every row whose provider id (NULL counted as `default_provider` when
    `include_null`) and provider invoice id are these is the same payment (docs/reconcile.md §13, one payment,
    one license)."""

    provider_id: str
    provider_invoice_id: str
    include_null: bool


@dataclass(frozen=True, slots=True)
class CheckWrite:
    """A no-change check to record with others (no audit rows): schedule, one attempt more, observation."""

    invoice: Invoice
    next_check_at: datetime
    observation: str | None
    checked_at: datetime | None
    #: the open review items it resolves (docs/review.md), in the same transaction
    resolves: tuple[Resolution, ...] = ()


@dataclass(frozen=True, slots=True)
class ReleaseWrite:
    """A lease to give back with others, changing nothing else (but `next_check_at` when given)."""

    invoice: Invoice
    next_check_at: datetime | None


@dataclass(frozen=True, slots=True)
class DuplicateFound:
    """The settle transaction found that another row of the same payment is the one to settle."""

    winner_id: str


@dataclass(frozen=True, slots=True)
class Settlement:
    """Everything the settle transaction of docs/reconcile.md §8 writes (or the recovery of
    docs/reconcile.md §1 when `recovered`).

    `audits` are the invoice-targeted rows the decision made (`invoice.settled`, `invoice.paid_late`,
    `invoice.amount_mismatch`); the store adds `license.issued`, `code.redeemed` and `subscription.renewed`,
    which depend on what the transaction finds.
    """

    now: datetime
    next_check_at: datetime
    observation: str | None
    provider_id: str | None
    audits: tuple[AuditRecord, ...]
    license: LicenseDraft | None  # None for a renewal invoice
    subscription: SubscriptionDraft | None  # only for a recurring policy
    post_settle_kinds: tuple[str, ...] = ()
    recovered: bool = False
    #: set when other rows may be the same payment: checked again under a lock inside the transaction
    payment: PaymentKey | None = None
    #: the open review items it resolves (docs/review.md); the transaction adds `license.issue_failed` once the
    #: invoice has its license
    resolves: tuple[Resolution, ...] = ()
    #: who decided the settle: `reconciler`, or the operator of a manual settle (the actor of the rows the
    #: store adds)
    actor: str = "reconciler"


@dataclass(frozen=True, slots=True)
class SettleOutcome:
    """The settle transaction went through: `license_id` is the invoice's license, ours or the one already
    there (None for a renewal invoice)."""

    license_id: str | None


@dataclass(frozen=True, slots=True)
class DueTask:
    """A pending post-settle task (docs/reconcile.md §15) with what running it needs."""

    invoice_id: str
    kind: str
    provider_id: str | None
    attempts: int
    provider_invoice_id: str
    subscription_id: str | None
    has_profile: bool


@dataclass(frozen=True, slots=True)
class TaskResult:
    """How one claimed attempt ended: `done`, still `pending` (retry at `next_attempt_at`) or `failed`."""

    status: str
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    profile: PaymentProfile | None = None
    audit: AuditRecord | None = None


@dataclass(frozen=True, slots=True)
class InstanceRow:
    """A `reconciler_instances` row: one running process and its last pass."""

    lease_owner: str
    hostname: str
    pid: int
    started_at: datetime
    last_pass_started_at: datetime | None = None
    last_pass_finished_at: datetime | None = None
    last_summary: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PendingByProvider:
    """Pending invoices still checked (created within `max_age`) for one provider id."""

    provider_id: str | None
    pending: int
    oldest_created_at: datetime | None  # None when the oldest row's timestamp cannot be read


@dataclass(frozen=True, slots=True)
class Quarantined:
    """An invoice held back for a person: unreadable, or a duplicate of another row of its payment."""

    invoice_id: str
    kind: str  # "unreadable" or "duplicate"
    detail: str  # the column, or the row that won
    since: datetime | None


@dataclass(frozen=True, slots=True)
class ReviewCount:
    """The open review items of one kind: how many, and when the oldest and the latest were opened (None when
    a stored time cannot be read)."""

    kind: str
    count: int
    oldest: datetime | None
    latest: datetime | None


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """A `review_items` row (docs/schema.md §3.11) with its invoice's provider ids and the `details` of the
    audit row that opened it (empty when that row is gone or unreadable)."""

    id: str
    invoice_id: str
    kind: str
    opened_at: datetime | None
    audit_id: str
    status: str  # open, resolved, dismissed
    closed_by: str | None
    closed_at: datetime | None
    close_reason: str | None
    provider_id: str | None  # the audit row's resolved provider, else the invoice's payment_provider_id
    provider_invoice_id: str | None
    details: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class StatusReport:
    """What `reconciler status` shows: backlog, instances and the open review items."""

    pending: tuple[PendingByProvider, ...]
    no_longer_checked: int
    instances: tuple[InstanceRow, ...]
    review: tuple[ReviewCount, ...] = field(default=())
    #: invoices quarantined now (at most `QUARANTINE_LISTED` of them) and how many there are in all
    quarantined: tuple[Quarantined, ...] = field(default=())
    quarantined_total: int = 0
    #: instances left out of `instances` because their last pass started before `instances_since`
    other_instances: int = 0
    #: providers an operator paused (provider_controls), by provider id
    paused: tuple[ProviderControl, ...] = ()


#: How many quarantined invoices `status` lists by id (the count covers the rest).
QUARANTINE_LISTED = 50


@dataclass(frozen=True, slots=True)
class Migrated:
    """What `migrate` did: the version it found, the one it left, the migrations it ran (none when the database
    was already at the newest version, or another process ran them meanwhile)."""

    from_version: int
    to_version: int
    applied: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    """One `api_keys` row (docs/api.md §2): the SHA-256 of its token, never the token."""

    id: str
    label: str
    token_hash: str
    role: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None


@dataclass(frozen=True, slots=True)
class PageRequest:
    """A keyset page: at most `limit` rows strictly after the row whose sort key is `after` (the first page
    when None); `after` is (sort timestamp, id) as stored."""

    limit: int
    after: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class InvoiceFilter:
    """Which invoices a page lists; None is no filter. Creation bounds are stored timestamps."""

    status: str | None = None
    provider_id: str | None = None
    created_before: str | None = None
    created_after: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderControl:
    """A provider an operator paused or resumed (`provider_controls`): honoured by every instance's claim."""

    provider_id: str
    paused: bool
    changed_by: str | None
    changed_at: datetime | None
    reason: str | None
