"""Frozen rows the store reads and the pure code reasons about. No I/O here."""

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
    """An invoice as a claim read it (SPEC §3), with the lease this pass holds on it."""

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
    """A licensing policy (SPEC §3 `policies`)."""

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
    """One `audit_log` row to write (SPEC §4.13); `actor` is always `reconciler`."""

    action: str
    target_kind: str
    target_id: str
    details: Mapping[str, Any]
