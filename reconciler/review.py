"""The review worklist (docs/review.md): which audit rows open an item, what clears each kind by itself, and the
one-line summary `reconciler review` shows. Pure: the store opens and resolves items in the transactions that
write the audit row or the change (store/engine.py).

One open item per (invoice, kind), where the kind is the audit action that raised it. An item of a kind in
`PERSON_ONLY` stays open until a person dismisses it; the others are also resolved by the reconciler when
the condition clears:

=============================  ============================================================================
kind                           resolved by the reconciler when
=============================  ============================================================================
invoice.provider_not_found     a later answer comes from the provider (it found the invoice)
invoice.bad_provider_response  a later answer can be read
invoice.unknown_status         a later answer has a status the driver knows
invoice.unreadable             the row is read again and a decision about it is recorded
invoice.paid_late              the invoice is settled (by a pass, a recovery, or the storefront first)
invoice.underpaid              the invoice is settled
license.issue_failed           the invoice's license is issued (or found issued)
post_settle.failed             the task is done and no other task of the invoice is failed
invoice.refunded               never: a person decides (dismiss)
invoice.duplicate              never
invoice.amount_mismatch        never
=============================  ============================================================================
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from reconciler.audit import REVIEW_ACTIONS, Action
from reconciler.decide import Decision, DecisionKind
from reconciler.driver_api import ProviderStatus
from reconciler.models import AuditRecord, Resolution
from reconciler.safe_text import printable

#: Kinds only a person closes: nothing the reconciler sees later says the problem is gone.
PERSON_ONLY: frozenset[str] = frozenset(
    {Action.INVOICE_REFUNDED, Action.INVOICE_DUPLICATE, Action.INVOICE_AMOUNT_MISMATCH}
)

#: How `reconciler` closes an item it resolved (`review_items.closed_by`).
RECONCILER = "reconciler"


def opens(record: AuditRecord) -> bool:
    """Whether writing this audit row opens a review item (unless one of its kind is open for the invoice)."""
    return record.target_kind == "invoice" and record.action in REVIEW_ACTIONS


def after_answer(decision: Decision, previous_observation: str | None) -> tuple[Resolution, ...]:
    """What a recorded decision about a provider answer clears. Only a new observation can clear anything:
    every kind it clears was opened by an observation of its own (docs/audit.md §3), so a check that saw the
    same thing again changes nothing and costs nothing."""
    observation = decision.observation
    if observation is None or observation == previous_observation:
        return ()
    if decision.kind in (DecisionKind.NOT_FOUND, DecisionKind.BAD_RESPONSE):
        return _READ_AGAIN
    return _answered(observation, decision.evidence.get("status") != ProviderStatus.UNKNOWN)


_READ_AGAIN = (Resolution(Action.INVOICE_UNREADABLE, "the invoice row could be read again"),)


@functools.lru_cache(maxsize=1024)
def _answered(observation: str, known_status: bool) -> tuple[Resolution, ...]:
    """What a readable answer observed as `observation` clears: the same few observations come back for
    invoice after invoice, so each one's resolutions are made once."""
    shown = printable(observation, 80)
    cleared = [
        *_READ_AGAIN,
        Resolution(Action.INVOICE_PROVIDER_NOT_FOUND, f"the provider found the invoice ({shown})"),
        Resolution(Action.INVOICE_BAD_PROVIDER_RESPONSE, f"a readable answer followed ({shown})"),
    ]
    if known_status:
        cleared.append(Resolution(Action.INVOICE_UNKNOWN_STATUS, f"a known status followed ({shown})"))
    return tuple(cleared)


def after_settle(decision: Decision | None, previous_observation: str | None) -> tuple[Resolution, ...]:
    """What settling the invoice clears (`decision` None: the recovery of a settled invoice without its
    license); the license's own resolution comes from the transaction (`license_present`)."""
    if decision is None:
        return _RECOVERED
    return after_answer(decision, previous_observation) + _SETTLED


def _settle_clears(how: str) -> tuple[Resolution, ...]:
    return (Resolution(Action.INVOICE_PAID_LATE, how), Resolution(Action.INVOICE_UNDERPAID, how))


_RECOVERED = _READ_AGAIN + _settle_clears("the invoice is settled")
_SETTLED = _settle_clears("the invoice was settled")


def license_present(license_id: str, *, issued: bool) -> Resolution:
    """The invoice has its license now: ours (`issued`) or one another writer issued first."""
    how = "issued" if issued else "found issued"
    return Resolution(Action.LICENSE_ISSUE_FAILED, f"license {license_id} {how}")


def task_done(kind: str) -> Resolution:
    """A post-settle task finished (the item is resolved only once no task of the invoice is failed)."""
    return Resolution(Action.POST_SETTLE_FAILED, f"post-settle task {printable(kind, 80)} done")


def summary(kind: str, details: Mapping[str, Any]) -> str:
    """One line about an item from the details of the audit row that opened it; provider text made safe."""

    def get(key: str) -> str:
        value = details.get(key)
        return "?" if value is None else printable(str(value), 120)

    raw = get("raw_status") + (
        f"/{get('raw_additional_status')}" if details.get("raw_additional_status") else ""
    )
    lines: dict[str, str] = {
        Action.INVOICE_AMOUNT_MISMATCH: f"settled with drifting amounts: expected {get('expected_amount_sats')} "
        f"sats, provider amount {get('provider_amount_sats')}, paid {get('provider_paid_sats')}",
        Action.INVOICE_BAD_PROVIDER_RESPONSE: f"the provider's answer could not be read: {get('error')}",
        Action.INVOICE_DUPLICATE: f"another row of the same payment is licensed: {get('winner_invoice_id')}",
        Action.INVOICE_PAID_LATE: f"paid after it expired ({raw}), paid_late = {get('policy')}",
        Action.INVOICE_PROVIDER_NOT_FOUND: f"the provider does not know the invoice: {get('error')}",
        Action.INVOICE_REFUNDED: f"the provider reports a refund ({raw})",
        Action.INVOICE_UNDERPAID: f"expired partly paid: {get('provider_paid_sats')} of "
        f"{get('expected_amount_sats')} sats ({raw})",
        Action.INVOICE_UNKNOWN_STATUS: f"a status the driver does not know ({raw})",
        Action.INVOICE_UNREADABLE: f"the row cannot be read: {get('column')} {get('reason')}",
        Action.LICENSE_ISSUE_FAILED: f"the license cannot be issued: {get('error')}",
        Action.POST_SETTLE_FAILED: f"post-settle task {get('kind')} failed after {get('attempts')} attempts: "
        f"{get('error')}",
    }
    return lines.get(kind, printable(kind, 120))
