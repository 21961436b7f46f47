"""What classifying one claimed row found: the verdict the runner records, or the dry run prints.

Classification (in the runner: it asks providers) is the same for a pass and a dry run; only what happens
with the verdict differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler import settlement
from reconciler.decide import Decision, DecisionKind
from reconciler.models import Invoice, Unreadable
from reconciler.passes import RELEASED
from reconciler.traffic import Failure, Provider, Release


@dataclass(frozen=True, slots=True)
class Quarantine:
    """The row, or a policy it needs, cannot be read: held back for a person."""

    row: Invoice | Unreadable
    provider_id: str | None
    column: str
    reason: str
    policy_id: str | None = None


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Another row of the same payment is the one the reconciler settles."""

    invoice: Invoice
    provider_id: str
    winner_id: str


@dataclass(frozen=True, slots=True)
class Skip:
    """No configured provider for this invoice."""

    invoice: Invoice
    provider_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Unanswered:
    """The provider gave no answer (or the lease was too short to ask)."""

    invoice: Invoice
    provider_id: str
    failure: Failure | Release


@dataclass(frozen=True, slots=True)
class Decided:
    """A decision (None: the recovery of a settled invoice without its license) and, when it settles, the
    plan of what the settle writes."""

    invoice: Invoice
    provider_id: str | None
    decision: Decision | None
    plan: settlement.Plan | settlement.IssueFailed | None = None
    kinds_of: Provider | None = None

    @property
    def kind(self) -> str:
        if isinstance(self.plan, settlement.IssueFailed):
            return DecisionKind.ISSUE_FAILED
        if self.decision is None:
            return DecisionKind.RECOVER if not self.invoice.has_license else DecisionKind.NO_CHANGE
        return self.decision.kind


Verdict = Quarantine | Duplicate | Skip | Unanswered | Decided


def kind_of(verdict: Verdict) -> str:
    if isinstance(verdict, Quarantine):
        return DecisionKind.UNREADABLE
    if isinstance(verdict, Duplicate):
        return DecisionKind.DUPLICATE
    if isinstance(verdict, Skip):
        return DecisionKind.SKIPPED
    if isinstance(verdict, Unanswered):
        return RELEASED if isinstance(verdict.failure, Release) else verdict.failure.kind
    return verdict.kind
