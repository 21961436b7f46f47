"""reconciler/review.py, pure (docs/review.md §2): what each kind of answer clears, and the one-line summary of an
item, which must stay one safe line whatever the audit row's details hold."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler import audit, review
from reconciler.audit import Action
from reconciler.decide import Decision, DecisionKind
from reconciler.models import AuditRecord
from reconciler.safe_text import UNSAFE_TEXT


def decision(kind: DecisionKind, observation: str | None, status: str | None = "PENDING") -> Decision:
    return Decision(kind, None, observation, evidence={"status": status} if status else {})


def kinds(resolutions: tuple[Any, ...]) -> set[str]:
    return {r.kind for r in resolutions}


def test_only_a_new_observation_clears_anything() -> None:
    assert review.after_answer(decision(DecisionKind.NO_CHANGE, "New"), "New") == ()
    assert review.after_answer(decision(DecisionKind.NO_CHANGE, None), "!not_found") == ()
    assert kinds(review.after_answer(decision(DecisionKind.NO_CHANGE, "New"), "!not_found")) == {
        Action.INVOICE_PROVIDER_NOT_FOUND,
        Action.INVOICE_BAD_PROVIDER_RESPONSE,
        Action.INVOICE_UNKNOWN_STATUS,
        Action.INVOICE_UNREADABLE,
    }


@pytest.mark.parametrize("kind", [DecisionKind.NOT_FOUND, DecisionKind.BAD_RESPONSE])
def test_a_bad_answer_clears_only_what_the_row_itself_had(kind: DecisionKind) -> None:
    found = review.after_answer(decision(kind, "!x", status=None), "!unreadable:created_at")
    assert kinds(found) == {Action.INVOICE_UNREADABLE}


def test_an_unknown_status_does_not_clear_an_unknown_status() -> None:
    found = review.after_answer(decision(DecisionKind.NO_CHANGE, "Weirder", status="UNKNOWN"), "Weird")
    assert Action.INVOICE_UNKNOWN_STATUS not in kinds(found)
    assert Action.INVOICE_PROVIDER_NOT_FOUND in kinds(found)


def test_settling_clears_paid_late_and_underpaid_and_nothing_only_a_person_judges() -> None:
    for found in (
        review.after_settle(decision(DecisionKind.SETTLE, "Settled"), "Expired/PaidLate"),
        review.after_settle(None, "Settled"),
    ):
        assert {Action.INVOICE_PAID_LATE, Action.INVOICE_UNDERPAID} <= kinds(found)
        assert not kinds(found) & review.PERSON_ONLY
    assert review.license_present("L1", issued=False).reason == "license L1 found issued"


def test_every_review_action_opens_an_item_and_nothing_else_does() -> None:
    for action in Action:
        opens = review.opens(AuditRecord(action, "invoice", "i", {}))
        assert opens == (action in audit.REVIEW_ACTIONS), action
    assert not review.opens(AuditRecord(Action.INVOICE_PAID_LATE, "license", "l", {}))


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=400), st.lists(st.text(), max_size=3)
)


@given(
    kind=st.sampled_from([*audit.REVIEW_ACTIONS, "invoice.something_new\n\x1b"]),
    details=st.dictionaries(
        st.sampled_from(
            [
                "raw_status",
                "raw_additional_status",
                "error",
                "column",
                "reason",
                "kind",
                "attempts",
                "policy",
                "winner_invoice_id",
                "expected_amount_sats",
                "provider_amount_sats",
                "provider_paid_sats",
            ]
        ),
        _VALUES,
    ),
)
def test_a_summary_is_one_safe_line_whatever_the_details(kind: str, details: dict[str, Any]) -> None:
    line = review.summary(kind, details)
    assert line and not UNSAFE_TEXT.search(line)  # no newline, no escape, no lone surrogate
    assert len(line) < 1000
