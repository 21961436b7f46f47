"""What a settle or a recovery writes (docs/reconcile.md §8, docs/licenses.md), planned as a pure function of
the invoice, the policy chosen for it, the provider and the time. The store records the plan in one
transaction; the dry run stops at the plan, so both classify an invoice the same way (`issue_failed`
included).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler import errors, ids, licenses
from reconciler.models import Invoice, LicenseDraft, Policy, SubscriptionDraft, UnreadablePolicy


@dataclass(frozen=True, slots=True)
class Plan:
    """The rows a settle adds besides the status: the license and subscription drafts (none for a renewal)
    and the driver's post-settle task kinds."""

    license: LicenseDraft | None
    subscription: SubscriptionDraft | None
    post_settle_kinds: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IssueFailed:
    """The license cannot be encoded (docs/licenses.md §3's limits): nothing is settled
    (docs/reconcile.md §11)."""

    reason: str


@dataclass(frozen=True, slots=True)
class PolicyUnreadable:
    """The policy the license depends on cannot be read: the invoice is quarantined until it is fixed."""

    policy: UnreadablePolicy

    @property
    def column(self) -> str:
        return f"policies.{self.policy.column}"


def plan(
    invoice: Invoice,
    policy: Policy | UnreadablePolicy | None,
    *,
    provider_id: str | None,
    post_settle_kinds: tuple[str, ...],
    now: datetime,
    signing_key: Ed25519PrivateKey | None,
) -> Plan | IssueFailed | PolicyUnreadable:
    """The plan of settling `invoice` at `now`. Without a signing key (dry run) the key is encoded and checked
    but not signed."""
    if invoice.subscription_id is not None:
        return Plan(None, None, ())  # a renewal: no license, no new subscription (docs/reconcile.md §8)
    if isinstance(policy, UnreadablePolicy):
        return PolicyUnreadable(policy)
    license_id = ids.uuid7(now)
    terms = licenses.license_terms(policy, now)
    try:
        if signing_key is None:
            licenses.encode_payload(
                product_id=invoice.product_id,
                license_id=license_id,
                issued_at=terms.issued_at,
                expires_at=terms.expires_at,
                entitlements=terms.entitlements,
                trial=terms.is_trial,
            )
            key = ""
        else:
            key = licenses.sign_license(
                signing_key, product_id=invoice.product_id, license_id=license_id, terms=terms
            )
    except errors.LicenseEncodingError as exc:
        return IssueFailed(exc.message)
    draft = LicenseDraft(
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
    subscription = _subscription(invoice, policy, provider_id, now)
    return Plan(draft, subscription, post_settle_kinds if subscription is not None else ())


def _subscription(
    invoice: Invoice, policy: Policy | None, provider_id: str | None, now: datetime
) -> SubscriptionDraft | None:
    terms = licenses.subscription_terms(policy, now)
    if terms is None or policy is None:
        return None
    listed = invoice.listed_currency is not None and invoice.listed_value is not None
    return SubscriptionDraft(
        id=ids.uuid7(now),
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
