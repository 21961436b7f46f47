"""docs/reconcile.md §3–§10, docs/audit.md §2–§4 and docs/reconcile.md §14: the pure decision about one
invoice, and its re-check schedule."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler import decide
from reconciler.decide import Answer, BadResponse, Decision, DecisionKind, NotFound, PaidLatePolicy
from reconciler.driver_api import ProviderStatus, Snapshot
from reconciler.models import Invoice, InvoiceStatus

PROVIDER = "btcpay_main"
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
AMOUNT = 10_000

# A BTCPay-like raw status for each typed status.
RAW = {
    ProviderStatus.PENDING: "New",
    ProviderStatus.SETTLED: "Settled",
    ProviderStatus.EXPIRED: "Expired",
    ProviderStatus.INVALID: "Invalid",
    ProviderStatus.REFUNDED: "Refunded",
    ProviderStatus.UNKNOWN: "Frobnicated",
}
OBSERVATION_ACTIONS = frozenset(
    {
        "invoice.provider_not_found",
        "invoice.bad_provider_response",
        "invoice.refunded",
        "invoice.unknown_status",
        "invoice.paid_late",
        "invoice.underpaid",
    }
)
TRANSITION_ACTIONS = {
    InvoiceStatus.SETTLED: "invoice.settled",
    InvoiceStatus.EXPIRED: "invoice.expired",
    InvoiceStatus.INVALID: "invoice.invalid",
}
POLICIES: tuple[PaidLatePolicy, ...] = ("flag", "settle")


def invoice(
    status: InvoiceStatus = InvoiceStatus.PENDING,
    *,
    last: str | None = None,
    subscription_id: str | None = None,
    amount_sats: int = AMOUNT,
) -> Invoice:
    return Invoice(
        id="3b241101-e2bb-4255-8caf-4136c566a962",
        payment_provider_id=PROVIDER,
        provider_invoice_id="BTCPAY-42",
        product_id="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        policy_id=None,
        status=status,
        amount_sats=amount_sats,
        listed_currency=None,
        listed_value=None,
        buyer_email=None,
        subscription_id=subscription_id,
        created_at=CREATED,
        last_provider_status=last,
    )


def snap(status: ProviderStatus, additional: str | None = None, **fields: Any) -> Snapshot:
    return Snapshot(status, fields.pop("raw_status", RAW[status]), additional, **fields)


def run(inv: Invoice, answer: Answer, paid_late: PaidLatePolicy = "flag") -> Decision:
    return decide.decide(inv, answer, provider_id=PROVIDER, paid_late=paid_late)


def actions(decision: Decision) -> Counter[str]:
    return Counter(a.action for a in decision.audits)


def details(decision: Decision, action: str) -> dict[str, Any]:
    (record,) = [a for a in decision.audits if a.action == action]
    return dict(record.details)


def test_decision_kinds_are_the_spec_names() -> None:
    assert {k.value for k in DecisionKind} == {
        "settle",
        "expire",
        "invalidate",
        "paid_late_flag",
        "recover",
        "renew",
        "no_change",
        "skipped",
        "provider_error",
        "not_found",
        "bad_response",
        "issue_failed",
        "unreadable",
        "duplicate",
    }


# --- docs/reconcile.md §4 mapping for a pending invoice -----------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "new_status", "expected_actions"),
    [
        (ProviderStatus.SETTLED, DecisionKind.SETTLE, InvoiceStatus.SETTLED, ["invoice.settled"]),
        (ProviderStatus.EXPIRED, DecisionKind.EXPIRE, InvoiceStatus.EXPIRED, ["invoice.expired"]),
        (ProviderStatus.INVALID, DecisionKind.INVALIDATE, InvoiceStatus.INVALID, ["invoice.invalid"]),
        (ProviderStatus.PENDING, DecisionKind.NO_CHANGE, None, []),
        (ProviderStatus.REFUNDED, DecisionKind.NO_CHANGE, None, ["invoice.refunded"]),
        (ProviderStatus.UNKNOWN, DecisionKind.NO_CHANGE, None, ["invoice.unknown_status"]),
    ],
)
def test_pending_invoice_mapping(
    status: ProviderStatus,
    kind: DecisionKind,
    new_status: InvoiceStatus | None,
    expected_actions: list[str],
) -> None:
    answer = snap(status)
    decision = run(invoice(), answer)
    assert decision.kind is kind
    assert decision.new_status is new_status
    assert actions(decision) == Counter(expected_actions)
    assert decision.observation == RAW[status]
    assert all(a.target_kind == "invoice" and a.target_id == invoice().id for a in decision.audits)


@pytest.mark.parametrize(
    ("status", "action"),
    [(ProviderStatus.EXPIRED, "invoice.expired"), (ProviderStatus.INVALID, "invoice.invalid")],
)
def test_expire_and_invalidate_audits_carry_the_evidence(status: ProviderStatus, action: str) -> None:
    answer = snap(status, currency="BTC", amount_sats=AMOUNT, paid_sats=0)
    facts = details(run(invoice(), answer), action)
    assert facts["provider_id"] == PROVIDER
    assert facts["raw_status"] == RAW[status]
    assert (facts["expected_amount_sats"], facts["provider_amount_sats"]) == (AMOUNT, AMOUNT)


@pytest.mark.parametrize(
    "answer",
    [
        snap(ProviderStatus.PENDING, raw_status="Processing"),  # paid, waiting for confirmations
        snap(ProviderStatus.PENDING, raw_status="UNDERPAID", partially_paid=True),
        snap(ProviderStatus.PENDING, "PaidPartial", partially_paid=True),
    ],
)
def test_pending_answers_change_nothing_and_audit_nothing(answer: Snapshot) -> None:
    decision = run(invoice(last="something else"), answer)
    assert (decision.kind, decision.new_status, decision.audits) == (DecisionKind.NO_CHANGE, None, ())


def test_unknown_status_audit_carries_the_raw_strings() -> None:
    decision = run(invoice(), snap(ProviderStatus.UNKNOWN, "Sideways", raw_status="Wobbly"))
    facts = details(decision, "invoice.unknown_status")
    assert facts["raw_status"] == "Wobbly"
    assert facts["raw_additional_status"] == "Sideways"
    assert decision.observation == "Wobbly/Sideways"


@pytest.mark.parametrize(
    ("status", "action"),
    [(ProviderStatus.REFUNDED, "invoice.refunded"), (ProviderStatus.UNKNOWN, "invoice.unknown_status")],
)
def test_refunded_and_unknown_are_audited_once(status: ProviderStatus, action: str) -> None:
    answer = snap(status)
    assert actions(run(invoice(last=None), answer)) == Counter([action])
    assert actions(run(invoice(last="New"), answer)) == Counter([action])
    assert run(invoice(last=answer.observation), answer).audits == ()


# --- expired / invalid / settled invoices --------------------------------------------------------------


@pytest.mark.parametrize("current", [InvoiceStatus.EXPIRED, InvoiceStatus.INVALID])
@pytest.mark.parametrize("paid_late", POLICIES)
def test_expired_or_invalid_invoice_marked_settled_is_settled(
    current: InvoiceStatus, paid_late: PaidLatePolicy
) -> None:
    decision = run(invoice(current), snap(ProviderStatus.SETTLED, "Marked", manually_marked=True), paid_late)
    assert decision.kind is DecisionKind.SETTLE
    assert decision.new_status is InvoiceStatus.SETTLED
    assert actions(decision)["invoice.settled"] == 1


@pytest.mark.parametrize("current", [InvoiceStatus.EXPIRED, InvoiceStatus.INVALID])
@pytest.mark.parametrize("paid_late", POLICIES)
@pytest.mark.parametrize(
    "answer",
    [
        snap(ProviderStatus.PENDING),
        snap(ProviderStatus.EXPIRED),
        snap(ProviderStatus.EXPIRED, "PaidPartial", partially_paid=True),
        snap(ProviderStatus.EXPIRED, "PaidOver", overpaid=True),
        snap(ProviderStatus.INVALID),
        snap(ProviderStatus.INVALID, "Marked", manually_marked=True),
        snap(ProviderStatus.REFUNDED),
        snap(ProviderStatus.UNKNOWN),
        NotFound(),
        BadResponse(),
    ],
    ids=repr,
)
def test_expired_or_invalid_invoice_is_otherwise_left_alone(
    current: InvoiceStatus, paid_late: PaidLatePolicy, answer: Answer
) -> None:
    decision = run(invoice(current), answer, paid_late)
    assert decision.new_status is None
    assert not set(actions(decision)) & set(TRANSITION_ACTIONS.values())


@pytest.mark.parametrize("paid_late", POLICIES)
@pytest.mark.parametrize(
    "answer",
    [
        *(snap(s) for s in ProviderStatus),
        snap(ProviderStatus.EXPIRED, "PaidLate", paid_late=True),
        snap(ProviderStatus.INVALID, "Marked", manually_marked=True),
        NotFound(),
        BadResponse(),
    ],
    ids=repr,
)
def test_settled_invoice_never_goes_back(paid_late: PaidLatePolicy, answer: Answer) -> None:
    decision = run(invoice(InvoiceStatus.SETTLED), answer, paid_late)
    assert decision.new_status is None
    assert not decision.settles
    assert not set(actions(decision)) & {*TRANSITION_ACTIONS.values(), "invoice.amount_mismatch"}


# --- docs/audit.md §3 once rule ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "observation", "kind", "action"),
    [
        (NotFound(), "!not_found", DecisionKind.NOT_FOUND, "invoice.provider_not_found"),
        (BadResponse(), "!bad_response", DecisionKind.BAD_RESPONSE, "invoice.bad_provider_response"),
    ],
)
@pytest.mark.parametrize("current", [InvoiceStatus.PENDING, InvoiceStatus.EXPIRED, InvoiceStatus.INVALID])
def test_provider_failures_leave_the_invoice_and_are_audited_once(
    answer: Answer, observation: str, kind: DecisionKind, action: str, current: InvoiceStatus
) -> None:
    first = run(invoice(current, last="New"), answer)
    assert (first.kind, first.new_status, first.observation) == (kind, None, observation)
    assert actions(first) == Counter([action])
    assert details(first, action)["raw_status"] == observation
    assert actions(run(invoice(current, last=None), answer)) == Counter([action])
    again = run(invoice(current, last=observation), answer)
    assert (again.kind, again.new_status, again.audits) == (kind, None, ())


def test_observation_is_raw_status_plus_additional_status() -> None:
    assert run(invoice(), snap(ProviderStatus.PENDING)).observation == "New"
    answer = snap(ProviderStatus.EXPIRED, "PaidLate", paid_late=True)
    assert run(invoice(InvoiceStatus.EXPIRED), answer).observation == "Expired/PaidLate"


@pytest.mark.parametrize(
    ("answer", "new_status", "action"),
    [
        (snap(ProviderStatus.SETTLED), InvoiceStatus.SETTLED, "invoice.settled"),
        (snap(ProviderStatus.EXPIRED), InvoiceStatus.EXPIRED, "invoice.expired"),
        (snap(ProviderStatus.INVALID), InvoiceStatus.INVALID, "invoice.invalid"),
    ],
)
def test_transition_audits_ignore_the_once_rule(
    answer: Snapshot, new_status: InvoiceStatus, action: str
) -> None:
    # A compare-and-set lost to another writer, or a status recorded earlier: the transition is still audited.
    decision = run(invoice(last=answer.observation), answer)
    assert decision.new_status is new_status
    assert actions(decision)[action] == 1


# --- docs/reconcile.md §9 paid late and underpaid ------------------------------------------------------

PAID_LATE = snap(ProviderStatus.EXPIRED, "PaidLate", paid_late=True, currency="BTC", amount_sats=AMOUNT)


def test_paid_late_flag_expires_a_pending_invoice() -> None:
    decision = run(invoice(), PAID_LATE, "flag")
    assert decision.kind in {DecisionKind.PAID_LATE_FLAG, DecisionKind.EXPIRE}
    assert decision.new_status is InvoiceStatus.EXPIRED
    assert actions(decision) == Counter(["invoice.expired", "invoice.paid_late"])


def test_paid_late_flag_keeps_an_expired_invoice_and_audits_once() -> None:
    decision = run(invoice(InvoiceStatus.EXPIRED, last="Expired"), PAID_LATE, "flag")
    assert (decision.kind, decision.new_status) == (DecisionKind.PAID_LATE_FLAG, None)
    assert actions(decision) == Counter(["invoice.paid_late"])
    again = run(invoice(InvoiceStatus.EXPIRED, last="Expired/PaidLate"), PAID_LATE, "flag")
    # already flagged: nothing to write, so it counts as no change (docs/reconcile.md §5)
    assert (again.kind, again.new_status, again.audits) == (DecisionKind.NO_CHANGE, None, ())


@pytest.mark.parametrize("current", [InvoiceStatus.PENDING, InvoiceStatus.EXPIRED, InvoiceStatus.INVALID])
def test_paid_late_settle_settles_with_both_audits(current: InvoiceStatus) -> None:
    decision = run(invoice(current, last="Expired"), PAID_LATE, "settle")
    assert (decision.kind, decision.new_status) == (DecisionKind.SETTLE, InvoiceStatus.SETTLED)
    assert actions(decision) == Counter(["invoice.paid_late", "invoice.settled"])


def test_paid_late_settle_still_audits_the_settle_when_the_observation_is_old() -> None:
    decision = run(invoice(InvoiceStatus.EXPIRED, last="Expired/PaidLate"), PAID_LATE, "settle")
    assert decision.new_status is InvoiceStatus.SETTLED
    assert actions(decision) == Counter(["invoice.settled"])


def test_paid_late_settle_goes_through_the_tripwire() -> None:
    answer = snap(ProviderStatus.EXPIRED, "PaidLate", paid_late=True, currency="BTC", amount_sats=AMOUNT + 1)
    decision = run(invoice(InvoiceStatus.EXPIRED), answer, "settle")
    assert decision.new_status is InvoiceStatus.SETTLED
    assert actions(decision)["invoice.amount_mismatch"] == 1


def test_underpaid_then_expired_is_expired_plus_underpaid() -> None:
    answer = snap(ProviderStatus.EXPIRED, "PaidPartial", partially_paid=True)
    decision = run(invoice(), answer)
    assert (decision.kind, decision.new_status) == (DecisionKind.EXPIRE, InvoiceStatus.EXPIRED)
    assert actions(decision) == Counter(["invoice.expired", "invoice.underpaid"])
    again = run(invoice(last="Expired/PaidPartial"), answer)
    assert actions(again) == Counter(["invoice.expired"])


# --- docs/reconcile.md §8 renewals -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "paid_late"),
    [(snap(ProviderStatus.SETTLED), "flag"), (PAID_LATE, "settle")],
)
def test_renewal_invoice_settles_as_renew(answer: Snapshot, paid_late: PaidLatePolicy) -> None:
    decision = run(invoice(subscription_id="9a7b6c5d-0000-4000-8000-000000000001"), answer, paid_late)
    assert (decision.kind, decision.new_status) == (DecisionKind.RENEW, InvoiceStatus.SETTLED)
    assert actions(decision)["invoice.settled"] == 1


# --- docs/reconcile.md §14 tripwire --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "paid", "drifts"),
    [
        (AMOUNT, None, False),
        (AMOUNT, AMOUNT, False),
        (AMOUNT, AMOUNT + 500, False),  # overpaid is not drift
        (AMOUNT - 1, None, True),
        (AMOUNT + 1, AMOUNT + 1, True),
        (AMOUNT, AMOUNT - 1, True),  # tolerance-accepted underpayment
        (None, None, False),  # fiat or unparseable: no opinion
        (None, AMOUNT - 1, False),
        (0, None, False),
        (-AMOUNT, AMOUNT, False),
    ],
)
def test_tripwire(amount: int | None, paid: int | None, drifts: bool) -> None:
    answer = snap(ProviderStatus.SETTLED, currency="BTC", amount_sats=amount, paid_sats=paid)
    drift = decide.tripwire(AMOUNT, answer)
    if not drifts:
        assert drift is None
        return
    assert drift is not None
    assert (drift.expected_amount_sats, drift.provider_amount_sats) == (AMOUNT, amount)
    assert (drift.provider_paid_sats, drift.currency) == (paid, "BTC")


@given(
    expected=st.integers(1, 10**15),
    amount=st.none() | st.integers(-(10**15), 10**15),
    paid=st.none() | st.integers(0, 10**15),
)
def test_tripwire_property(expected: int, amount: int | None, paid: int | None) -> None:
    answer = snap(ProviderStatus.SETTLED, currency="SATS", amount_sats=amount, paid_sats=paid)
    underpaid = paid is not None and paid < expected
    should = amount is not None and amount > 0 and (amount != expected or underpaid)
    assert (decide.tripwire(expected, answer) is not None) == should


@pytest.mark.parametrize(("paid", "currency"), [(None, "BTC"), (AMOUNT - 7, "SATS")])
def test_settle_with_drift_audits_the_mismatch_and_settles_anyway(paid: int | None, currency: str) -> None:
    answer = snap(ProviderStatus.SETTLED, currency=currency, amount_sats=AMOUNT - 7, paid_sats=paid)
    decision = run(invoice(), answer)
    assert (decision.kind, decision.new_status) == (DecisionKind.SETTLE, InvoiceStatus.SETTLED)
    assert actions(decision) == Counter(["invoice.settled", "invoice.amount_mismatch"])
    assert decision.drift is not None
    facts = details(decision, "invoice.amount_mismatch")
    assert facts["provider_invoice_id"] == "BTCPAY-42"
    assert facts["expected_amount_sats"] == AMOUNT
    assert facts["provider_amount_sats"] == AMOUNT - 7
    assert facts["provider_paid_sats"] == paid
    assert "provider_paid_sats" in facts
    assert facts["currency"] == currency


@pytest.mark.parametrize(
    "answer",
    [
        snap(ProviderStatus.SETTLED, currency="USD"),
        snap(ProviderStatus.SETTLED, currency="BTC", amount_sats=AMOUNT, paid_sats=AMOUNT),
    ],
)
def test_settle_without_drift_has_no_mismatch(answer: Snapshot) -> None:
    decision = run(invoice(), answer)
    assert decision.drift is None
    assert actions(decision) == Counter(["invoice.settled"])


def test_no_tripwire_outside_settle_decisions() -> None:
    answer = snap(ProviderStatus.EXPIRED, currency="BTC", amount_sats=1, paid_sats=0)
    decision = run(invoice(), answer)
    assert decision.drift is None
    assert "invoice.amount_mismatch" not in actions(decision)


# --- properties over every input ---------------------------------------------------------------------

texts = st.text(max_size=10)
snapshots = st.builds(
    Snapshot,
    status=st.sampled_from(ProviderStatus),
    raw_status=st.sampled_from(sorted(RAW.values())) | texts,
    raw_additional_status=st.none() | st.sampled_from(["PaidLate", "PaidPartial", "Marked"]) | texts,
    currency=st.none() | st.sampled_from(["BTC", "SATS", "USD"]),
    amount_sats=st.none() | st.integers(-5, 20_000),
    paid_sats=st.none() | st.integers(-5, 20_000),
    paid_late=st.booleans(),
    partially_paid=st.booleans(),
    overpaid=st.booleans(),
    manually_marked=st.booleans(),
)
answers: st.SearchStrategy[Answer] = st.one_of(snapshots, st.builds(NotFound), st.builds(BadResponse))


@st.composite
def cases(draw: st.DrawFn) -> tuple[Invoice, Answer, PaidLatePolicy]:
    answer = draw(answers)
    last = draw(st.none() | texts | st.just(decide.observation_of(answer)) | st.just("!not_found"))
    inv = invoice(
        draw(st.sampled_from(InvoiceStatus)),
        last=last,
        subscription_id=draw(st.none() | st.just("9a7b6c5d-0000-4000-8000-000000000001")),
        amount_sats=draw(st.integers(-5, 20_000)),
    )
    return inv, answer, draw(st.sampled_from(POLICIES))


PENDING_MOVES = {ProviderStatus.EXPIRED: InvoiceStatus.EXPIRED, ProviderStatus.INVALID: InvoiceStatus.INVALID}


def spec_status(current: InvoiceStatus, answer: Answer, policy: PaidLatePolicy) -> InvoiceStatus | None:
    """docs/reconcile.md §4 and §9 as a table: the status an answer moves an invoice to, None for no
    change."""
    if current is InvoiceStatus.SETTLED or not isinstance(answer, Snapshot):
        return None
    if answer.status is ProviderStatus.SETTLED:
        return InvoiceStatus.SETTLED
    if answer.status is ProviderStatus.EXPIRED and answer.paid_late:
        if policy == "settle":
            return InvoiceStatus.SETTLED
        # "keeps it (or makes it) expired"
        return None if current is InvoiceStatus.EXPIRED else InvoiceStatus.EXPIRED
    if current is InvoiceStatus.PENDING:
        return PENDING_MOVES.get(answer.status)
    return None


def spec_observation(answer: Answer) -> str:
    if isinstance(answer, NotFound):
        return "!not_found"
    if isinstance(answer, BadResponse):
        return "!bad_response"
    if answer.raw_additional_status:
        return f"{answer.raw_status}/{answer.raw_additional_status}"
    return answer.raw_status


@given(cases())
def test_decide_follows_the_mapping_for_every_input(case: tuple[Invoice, Answer, PaidLatePolicy]) -> None:
    inv, answer, policy = case
    decision = run(inv, answer, policy)
    assert decision.new_status is spec_status(inv.status, answer, policy)
    assert decision.observation == spec_observation(answer)
    if inv.status is InvoiceStatus.SETTLED:
        assert decision.new_status is None
    if decision.new_status is not None:
        assert actions(decision)[TRANSITION_ACTIONS[decision.new_status]] == 1
    if decision.new_status is InvoiceStatus.SETTLED:
        renewal = inv.subscription_id is not None
        assert decision.kind is (DecisionKind.RENEW if renewal else DecisionKind.SETTLE)
        assert isinstance(answer, Snapshot)
        assert decision.drift == decide.tripwire(inv.amount_sats, answer)
        assert actions(decision)["invoice.amount_mismatch"] == (decision.drift is not None)
    else:
        assert decision.drift is None
        assert "invoice.amount_mismatch" not in actions(decision)


@given(cases())
def test_decide_is_deterministic(case: tuple[Invoice, Answer, PaidLatePolicy]) -> None:
    assert run(*case) == run(*case)


@given(cases())
def test_once_rule(case: tuple[Invoice, Answer, PaidLatePolicy]) -> None:
    inv, answer, policy = case
    decision = run(inv, answer, policy)
    unchanged = spec_observation(answer) == inv.last_provider_status
    if unchanged:
        assert not set(actions(decision)) & OBSERVATION_ACTIONS
    if unchanged and decision.new_status is None:
        assert decision.audits == ()
    assert all(n == 1 for n in actions(decision).values())


@given(cases())
def test_every_invoice_audit_names_provider_invoice_and_raw_status(
    case: tuple[Invoice, Answer, PaidLatePolicy],
) -> None:
    inv, answer, policy = case
    for record in run(inv, answer, policy).audits:
        assert (record.target_kind, record.target_id) == ("invoice", inv.id)
        assert record.details["provider_id"] == PROVIDER
        assert record.details["provider_invoice_id"] == inv.provider_invoice_id
        raw = answer.raw_status if isinstance(answer, Snapshot) else spec_observation(answer)
        assert record.details["raw_status"] == raw


# --- docs/reconcile.md §10 schedule -------------------------------------------------------------------

SCHEDULE = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15), timedelta(minutes=60))


@pytest.mark.parametrize(
    ("age", "step"),
    [
        (timedelta(0), timedelta(minutes=1)),
        (timedelta(minutes=59, seconds=59), timedelta(minutes=1)),
        (timedelta(hours=1), timedelta(minutes=5)),
        (timedelta(hours=5, minutes=59), timedelta(minutes=5)),
        (timedelta(hours=6), timedelta(minutes=15)),
        (timedelta(hours=23, minutes=59, seconds=59, microseconds=999_999), timedelta(minutes=15)),
        (timedelta(hours=24), timedelta(minutes=60)),
        (timedelta(days=30), timedelta(minutes=60)),
    ],
)
def test_schedule_step_grows_with_age(age: timedelta, step: timedelta) -> None:
    assert decide.schedule_step(SCHEDULE, age) == step


def test_schedule_step_uses_the_configured_steps_in_order() -> None:
    steps = (timedelta(seconds=10), timedelta(seconds=20), timedelta(seconds=30), timedelta(seconds=40))
    ages = [timedelta(minutes=30), timedelta(hours=3), timedelta(hours=12), timedelta(hours=48)]
    assert [decide.schedule_step(steps, a) for a in ages] == list(steps)


@pytest.mark.parametrize("jitter", [0.9, 1.0, 1.1])
@pytest.mark.parametrize(
    ("age", "step"),
    [(timedelta(minutes=10), timedelta(minutes=1)), (timedelta(hours=6), timedelta(minutes=15))],
)
def test_next_check_at_applies_the_jitter_to_the_step_for_the_age(
    jitter: float, age: timedelta, step: timedelta
) -> None:
    now = CREATED + age
    assert decide.next_check_at(SCHEDULE, CREATED, now, jitter) == now + step * jitter


@given(age=st.timedeltas(timedelta(0), timedelta(days=3)), jitter=st.floats(0.9, 1.1))
def test_next_check_at_is_always_after_now_within_ten_percent(age: timedelta, jitter: float) -> None:
    now = CREATED + age
    step = decide.schedule_step(SCHEDULE, age)
    later = decide.next_check_at(SCHEDULE, CREATED, now, jitter)
    assert now + step * 0.9 <= later <= now + step * 1.1
    assert later > now
