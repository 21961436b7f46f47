"""The audit vocabulary (a public contract: storefronts and review tools read `audit_log`).

Every action the reconciler writes, its target and the builder of its `details`, in one place. Every
invoice-targeted row carries at least `provider_id`, `provider_invoice_id` and `raw_status`. Rows marked
"once" follow the once rule: written only when the observation differs from the invoice's
`last_provider_status`.

=============================  ==============  =========================================================
action                         written by      details beyond the three above
=============================  ==============  =========================================================
invoice.settled                decide          the evidence; `paid_late: true` on a paid-late settle; an
                                               operator's settle: `manual: true`, `actor`, `reason`,
                                               `paid_late`, `underpaid` (actor: the operator)
invoice.expired                decide, store   the evidence; `redemption_cancelled` (store)
invoice.invalid                decide, store   the evidence; `redemption_cancelled` (store)
invoice.paid_late (once)       decide, store   the evidence, `policy` flag|settle; `redemption_cancelled`
invoice.underpaid (once)       decide          the evidence
invoice.amount_mismatch        decide          `expected_amount_sats`, `provider_amount_sats`,
                                               `provider_paid_sats`, `currency`
invoice.provider_not_found     decide          the evidence, `error`
  (once)
invoice.bad_provider_response  decide          the evidence, `error`
  (once)
invoice.refunded (once)        decide          the evidence
invoice.unknown_status (once)  decide          the evidence
license.issued                 store           target the license: `invoice_id`, `policy_id`,
                                               `recovered`, `subscription_created`
license.issue_failed (once)    runner          the evidence, `error`
code.redeemed                  store           target the discount code: `invoice_id`, `license_id`,
                                               `redemption_id`
subscription.renewed           store           `subscription_id`, `subscription_found`
post_settle.failed             post-settle     `kind`, `attempts`, `error`
invoice.unreadable (once)      runner          `column`, `reason`, `policy_id` for a policy's column
invoice.duplicate (once)       runner          `winner_invoice_id`
invoice.recheck_requested      operator        `actor`; written with the lease the re-check takes
review.dismissed               operator        target the invoice: `item_id`, `kind`, `reason`
post_settle.retry_requested    operator        `kind`, `actor`
provider.paused                operator        target the provider: `actor`, `reason`
provider.resumed               operator        target the provider: `actor`, `reason`
=============================  ==============  =========================================================

Rows written by an operator's action (reconciler/operator/actions.py) carry the operator as their `actor`
(`cli:<unix user>`, `api-key:<key id>`), never a token.

"The evidence" is `decide.evidence`: raw statuses, the typed status, currency and amounts, flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from reconciler.models import AuditRecord


class Action(StrEnum):
    """Every audit action the reconciler writes."""

    INVOICE_SETTLED = "invoice.settled"
    INVOICE_EXPIRED = "invoice.expired"
    INVOICE_INVALID = "invoice.invalid"
    INVOICE_PAID_LATE = "invoice.paid_late"
    INVOICE_UNDERPAID = "invoice.underpaid"
    INVOICE_AMOUNT_MISMATCH = "invoice.amount_mismatch"
    INVOICE_PROVIDER_NOT_FOUND = "invoice.provider_not_found"
    INVOICE_BAD_PROVIDER_RESPONSE = "invoice.bad_provider_response"
    INVOICE_REFUNDED = "invoice.refunded"
    INVOICE_UNKNOWN_STATUS = "invoice.unknown_status"
    LICENSE_ISSUED = "license.issued"
    LICENSE_ISSUE_FAILED = "license.issue_failed"
    CODE_REDEEMED = "code.redeemed"
    SUBSCRIPTION_RENEWED = "subscription.renewed"
    POST_SETTLE_FAILED = "post_settle.failed"
    INVOICE_UNREADABLE = "invoice.unreadable"
    INVOICE_DUPLICATE = "invoice.duplicate"
    INVOICE_RECHECK_REQUESTED = "invoice.recheck_requested"
    REVIEW_DISMISSED = "review.dismissed"
    POST_SETTLE_RETRY_REQUESTED = "post_settle.retry_requested"
    PROVIDER_PAUSED = "provider.paused"
    PROVIDER_RESUMED = "provider.resumed"
    API_KEY_CREATED = "api_key.created"
    API_KEY_REVOKED = "api_key.revoked"


#: Actions a person should look at: counted by `reconciler status` and the review metrics.
REVIEW_ACTIONS: tuple[Action, ...] = (
    Action.INVOICE_AMOUNT_MISMATCH,
    Action.INVOICE_BAD_PROVIDER_RESPONSE,
    Action.INVOICE_DUPLICATE,
    Action.INVOICE_PAID_LATE,
    Action.INVOICE_PROVIDER_NOT_FOUND,
    Action.INVOICE_REFUNDED,
    Action.INVOICE_UNDERPAID,
    Action.INVOICE_UNKNOWN_STATUS,
    Action.INVOICE_UNREADABLE,
    Action.LICENSE_ISSUE_FAILED,
    Action.POST_SETTLE_FAILED,
)

#: Transitions whose details say whether the invoice's pending discount redemption was cancelled.
_REDEMPTION_NOTED = frozenset({Action.INVOICE_EXPIRED, Action.INVOICE_INVALID, Action.INVOICE_PAID_LATE})


def on_invoice(action: Action, invoice_id: str, facts: Mapping[str, Any], **extra: Any) -> AuditRecord:
    """An invoice-targeted row: `facts` (the evidence, which holds the three required keys) plus `extra`."""
    return AuditRecord(action, "invoice", invoice_id, {**facts, **extra})


def with_redemption(record: AuditRecord, *, cancelled: bool) -> AuditRecord:
    """What the transaction found about the discount redemption, on the transitions that report it."""
    if record.action not in _REDEMPTION_NOTED:
        return record
    return AuditRecord(
        record.action,
        record.target_kind,
        record.target_id,
        {**record.details, "redemption_cancelled": cancelled},
    )


def amount_mismatch(
    invoice_id: str,
    facts: Mapping[str, Any],
    *,
    expected_amount_sats: int,
    provider_amount_sats: int,
    provider_paid_sats: int | None,
    currency: str | None,
) -> AuditRecord:
    return on_invoice(
        Action.INVOICE_AMOUNT_MISMATCH,
        invoice_id,
        facts,
        expected_amount_sats=expected_amount_sats,
        provider_amount_sats=provider_amount_sats,
        provider_paid_sats=provider_paid_sats,
        currency=currency,
    )


def license_issued(
    license_id: str,
    *,
    invoice_id: str,
    provider_id: str | None,
    provider_invoice_id: str,
    policy_id: str | None,
    recovered: bool,
    subscription_created: bool,
) -> AuditRecord:
    return AuditRecord(
        Action.LICENSE_ISSUED,
        "license",
        license_id,
        {
            "invoice_id": invoice_id,
            "provider_id": provider_id,
            "provider_invoice_id": provider_invoice_id,
            "policy_id": policy_id,
            "recovered": recovered,
            "subscription_created": subscription_created,
        },
    )


def code_redeemed(
    code_id: str, *, invoice_id: str, license_id: str | None, redemption_id: str
) -> AuditRecord:
    return AuditRecord(
        Action.CODE_REDEEMED,
        "discount_code",
        code_id,
        {"invoice_id": invoice_id, "license_id": license_id, "redemption_id": redemption_id},
    )


def subscription_renewed(
    invoice_id: str,
    *,
    provider_id: str | None,
    provider_invoice_id: str,
    raw_status: str | None,
    subscription_id: str,
    found: bool,
) -> AuditRecord:
    return AuditRecord(
        Action.SUBSCRIPTION_RENEWED,
        "invoice",
        invoice_id,
        {
            "provider_id": provider_id,
            "provider_invoice_id": provider_invoice_id,
            "raw_status": raw_status,
            "subscription_id": subscription_id,
            "subscription_found": found,
        },
    )


def issue_failed(
    invoice_id: str,
    *,
    evidence: Mapping[str, Any],
    provider_id: str | None,
    provider_invoice_id: str,
    error: str,
) -> AuditRecord:
    details = {**evidence, "provider_id": provider_id, "provider_invoice_id": provider_invoice_id}
    details.setdefault("raw_status", None)
    return AuditRecord(Action.LICENSE_ISSUE_FAILED, "invoice", invoice_id, {**details, "error": error})


def post_settle_failed(
    invoice_id: str,
    *,
    provider_id: str | None,
    provider_invoice_id: str,
    kind: str,
    attempts: int,
    error: str,
) -> AuditRecord:
    return AuditRecord(
        Action.POST_SETTLE_FAILED,
        "invoice",
        invoice_id,
        {
            "provider_id": provider_id,
            "provider_invoice_id": provider_invoice_id,
            "raw_status": None,
            "kind": kind,
            "attempts": attempts,
            "error": error,
        },
    )


def unreadable(
    invoice_id: str,
    *,
    provider_id: str | None,
    provider_invoice_id: str | None,
    column: str,
    reason: str,
    policy_id: str | None = None,
) -> AuditRecord:
    details: dict[str, Any] = {
        "provider_id": provider_id,
        "provider_invoice_id": provider_invoice_id,
        "raw_status": None,
        "column": column,
        "reason": reason,
    }
    if policy_id is not None:
        details["policy_id"] = policy_id
    return AuditRecord(Action.INVOICE_UNREADABLE, "invoice", invoice_id, details)


def duplicate(invoice_id: str, *, provider_id: str, provider_invoice_id: str, winner_id: str) -> AuditRecord:
    return AuditRecord(
        Action.INVOICE_DUPLICATE,
        "invoice",
        invoice_id,
        {
            "provider_id": provider_id,
            "provider_invoice_id": provider_invoice_id,
            "raw_status": None,
            "winner_invoice_id": winner_id,
        },
    )


def by_operator(
    action: Action,
    target_kind: str,
    target_id: str,
    actor: str,
    details: Mapping[str, Any],
) -> AuditRecord:
    """A row an operator's action writes: `actor` in the row and in its details."""
    return AuditRecord(action, target_kind, target_id, {**details, "actor": actor}, actor)


def api_key_created(key_id: str, *, role: str, label: str, actor: str) -> AuditRecord:
    """`api_key.created`: who made which key, for which role; never its token (docs/audit.md §2)."""
    return by_operator(Action.API_KEY_CREATED, "api_key", key_id, actor, {"role": role, "label": label})


def api_key_revoked(key_id: str, *, actor: str) -> AuditRecord:
    """`api_key.revoked`: who revoked which key (docs/audit.md §2)."""
    return by_operator(Action.API_KEY_REVOKED, "api_key", key_id, actor, {})
