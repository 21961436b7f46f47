"""Frozen rows the store reads and the pure code reasons about, and the drafts it hands the store to write.
No I/O here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class InvoiceStatus(StrEnum):
    PENDING = "pending"
    SETTLED = "settled"
    EXPIRED = "expired"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class Invoice:
    """An invoice as a claim read it (docs/schema.md §3.3), with the lease this pass holds on it."""

    id: str
    payment_provider_id: str | None
    provider_invoice_id: str
    product_id: str
    policy_id: str | None
    status: InvoiceStatus
    amount_sats: int
    listed_currency: str | None
    listed_value: int | None
    buyer_email: str | None
    subscription_id: str | None
    created_at: datetime
    settled_at: datetime | None = None
    check_attempts: int = 0
    last_provider_status: str | None = None
    lease_token: str | None = None
    has_license: bool = False


@dataclass(frozen=True, slots=True)
class Policy:
    """A licensing policy (docs/schema.md §3.2 `policies`)."""

    id: str
    product_id: str
    slug: str
    duration_seconds: int = 0
    is_trial: bool = False
    is_recurring: bool = False
    trial_days: int = 0
    renewal_period_days: int = 0
    grace_seconds: int = 0
    max_machines: int = 1
    entitlements: tuple[str, ...] = ()
    active: bool = True
    created_at: str = ""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One `audit_log` row to write (docs/audit.md §1); `actor` is `reconciler` for what the reconciler
    does by itself, `cli:<unix user>` or `api-key:<key id>` for an operator's action (operator/actions.py)."""

    action: str
    target_kind: str
    target_id: str
    details: Mapping[str, Any]
    actor: str = "reconciler"


@dataclass(frozen=True, slots=True)
class Resolution:
    """An open review item of this kind on the invoice being written is resolved by the reconciler, for this
    reason, in the same transaction (docs/review.md §2)."""

    kind: str
    reason: str


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A claimed invoice row the reconciler cannot read (docs/reconcile.md §11): quarantined, never fatal.

    `id` is the stored value as it came (fenced writes match on it); the other fields are what could be
    read of the row, `None` where even that failed.
    """

    id: Any
    lease_token: str | None
    column: str
    reason: str
    payment_provider_id: str | None = None
    provider_invoice_id: str | None = None
    last_provider_status: str | None = None

    @property
    def label(self) -> str:
        """The id for logs and audit rows."""
        return self.id if isinstance(self.id, str) else ascii(self.id)

    @property
    def observation(self) -> str:
        """What `last_provider_status` records, so the audit is written once per reason (docs/audit.md §3)."""
        return f"!unreadable:{self.column}"


@dataclass(frozen=True, slots=True)
class UnreadablePolicy:
    """A policy row that cannot be read; the invoices that need it are quarantined."""

    id: str
    slug: str | None
    active: bool
    column: str
    reason: str


@dataclass(frozen=True, slots=True)
class PaymentRow:
    """One row of a payment (rows sharing a provider and provider invoice id), as far as choosing the one
    to settle needs it."""

    id: str
    provider_invoice_id: str
    status: str
    created_at: str  # as stored: text orders correctly and survives a row that is otherwise unreadable
    has_license: bool


@dataclass(frozen=True, slots=True)
class LicenseDraft:
    """A license row the settle transaction inserts unless the invoice already has one."""

    id: str
    product_id: str
    policy_id: str | None
    license_key: str
    issued_at: datetime
    expires_at: datetime | None
    grace_seconds: int
    max_machines: int
    entitlements: tuple[str, ...]
    is_trial: bool
    buyer_email: str | None


@dataclass(frozen=True, slots=True)
class SubscriptionDraft:
    """The subscription row of a recurring policy, inserted unless the license already has one."""

    id: str
    policy_id: str | None
    product_id: str
    started_at: datetime
    period_days: int
    listed_currency: str
    listed_value: int
    payment_provider_id: str | None
    next_renewal_at: datetime
