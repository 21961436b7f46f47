"""Metrics (docs/cli.md §5.4) through the `runner.Observer` hooks, called as the runner calls them.

Every series an alert can match exists from start-up at 0, so `increase(...) > 0` sees the first event.
"""

from __future__ import annotations

import platform
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from reconciler import __version__, runner, traffic
from reconciler.decide import DecisionKind
from reconciler.metrics import (
    DECISION_KINDS,
    PASS_RESULTS,
    REQUEST_OUTCOMES,
    REVIEW_ACTIONS,
    TASK_STATUSES,
    Metrics,
)
from reconciler.runner import PassSummary
from reconciler.store.base import PendingByProvider, ReviewCount, StatusReport

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
PROVIDERS = ["btcpay_main", "shop_zaprite"]
REPO = Path(__file__).resolve().parents[2]
T = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def samples(metrics: Metrics) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def nothing_due() -> PassSummary:
    return PassSummary(started_at=T, finished_at=T)


# -- every labelled series from start-up -------------------------------------------------------------------------
def test_every_labelled_series_exists_at_zero_before_any_event() -> None:
    found = samples(Metrics(providers=PROVIDERS))
    kinds = [*DecisionKind, runner.FENCED, runner.RELEASED]
    outcomes = {"ok", "unavailable", "error", *traffic._OUTCOMES.values()}
    for provider in [*PROVIDERS, "-"]:
        for kind in kinds:
            assert value(found, "reconciler_decisions_total", provider=provider, kind=kind) == 0, kind
        for status in ("done", "pending", "failed"):
            assert value(found, "reconciler_post_settle_tasks_total", provider=provider, status=status) == 0
    for provider in PROVIDERS:
        for outcome in outcomes:
            assert (
                value(found, "reconciler_provider_requests_total", provider=provider, outcome=outcome) == 0
            ), outcome
        assert value(found, "reconciler_provider_request_seconds_count", provider=provider) == 0
        assert value(found, "reconciler_circuit_open", provider=provider) == 0
    for result in ("ok", "degraded"):
        assert value(found, "reconciler_passes_total", result=result) == 0


def test_the_first_event_is_an_increase_of_one() -> None:
    metrics = Metrics(providers=PROVIDERS)
    metrics.decision("btcpay_main", DecisionKind.ISSUE_FAILED)
    metrics.task("shop_zaprite", "failed")
    metrics.request("btcpay_main", "auth_error", 0.2)
    degraded = nothing_due()
    degraded.degraded["btcpay_main"] = "authentication failed"
    metrics.pass_finished(degraded, PROVIDERS, {"btcpay_main"})
    found = samples(metrics)
    assert value(found, "reconciler_decisions_total", provider="btcpay_main", kind="issue_failed") == 1
    assert value(found, "reconciler_decisions_total", provider="shop_zaprite", kind="issue_failed") == 0
    assert value(found, "reconciler_post_settle_tasks_total", provider="shop_zaprite", status="failed") == 1
    assert (
        value(found, "reconciler_provider_requests_total", provider="btcpay_main", outcome="auth_error") == 1
    )
    assert value(found, "reconciler_passes_total", result="degraded") == 1
    assert value(found, "reconciler_passes_total", result="ok") == 0
    assert value(found, "reconciler_circuit_open", provider="btcpay_main") == 1
    assert value(found, "reconciler_circuit_open", provider="shop_zaprite") == 0


def test_a_provider_id_without_a_section_still_gets_its_series_on_first_use() -> None:
    metrics = Metrics(providers=PROVIDERS)
    metrics.decision("gone", DecisionKind.SKIPPED)
    assert value(samples(metrics), "reconciler_decisions_total", provider="gone", kind="skipped") == 1


# -- what is running -------------------------------------------------------------------------------------------
def test_build_info_and_the_standard_process_metrics() -> None:
    found = samples(Metrics(providers=PROVIDERS))
    python = platform.python_version()
    assert value(found, "reconciler_build_info", version=__version__, python=python) == 1
    names = {name for name, _ in found}
    assert {"python_info", "python_gc_objects_collected_total"} <= names
    if sys.platform.startswith("linux"):  # the process collector reads /proc
        assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"} <= names


def test_two_instances_in_one_process_keep_their_own_registries() -> None:
    first, second = Metrics(providers=PROVIDERS), Metrics(providers=PROVIDERS)
    first.decision("btcpay_main", DecisionKind.SETTLE)
    assert value(samples(second), "reconciler_decisions_total", provider="btcpay_main", kind="settle") == 0


# -- items for review ------------------------------------------------------------------------------------------
def report(*review: tuple[str, int]) -> StatusReport:
    return StatusReport(
        pending=(PendingByProvider("btcpay_main", 2, T - timedelta(minutes=5)),),
        no_longer_checked=0,
        instances=(),
        review=tuple(ReviewCount(action, count, T, T) for action, count in review),
    )


def test_review_items_are_zero_for_every_review_action_and_follow_the_report() -> None:
    metrics = Metrics(providers=PROVIDERS)
    metrics.backlog(report(("invoice.paid_late", 2), ("post_settle.failed", 1)), T, PROVIDERS)
    found = samples(metrics)
    assert value(found, "reconciler_review_items", action="invoice.paid_late") == 2
    assert value(found, "reconciler_review_items", action="post_settle.failed") == 1
    for action in ("invoice.unreadable", "invoice.duplicate", "license.issue_failed"):
        assert value(found, "reconciler_review_items", action=action) == 0, action
    assert {labels for name, labels in found if name == "reconciler_review_items"} == {
        frozenset({("action", action)}) for action in REVIEW_ACTIONS
    }

    # items closed since leave the report: the gauge drops back to 0
    metrics.backlog(report(("post_settle.failed", 1)), T, PROVIDERS)
    found = samples(metrics)
    assert value(found, "reconciler_review_items", action="invoice.paid_late") == 0
    assert value(found, "reconciler_review_items", action="post_settle.failed") == 1


def test_an_action_the_store_adds_to_its_review_list_gets_a_series_too() -> None:
    metrics = Metrics(providers=PROVIDERS)
    metrics.backlog(report(("invoice.something_new", 3)), T, PROVIDERS)
    assert value(samples(metrics), "reconciler_review_items", action="invoice.something_new") == 3
    metrics.backlog(report(), T, PROVIDERS)
    assert value(samples(metrics), "reconciler_review_items", action="invoice.something_new") == 0


def test_the_metrics_name_every_action_that_opens_review_items() -> None:
    """The stores count the open items of whatever kinds the one audit vocabulary opened (no kind is named
    in their SQL), and the metrics name the same kinds."""
    from reconciler import audit, review
    from reconciler.models import AuditRecord
    from reconciler.store import queries

    for dialect in queries.DIALECTS:
        for name in ("status_review", "open_review_item"):
            query = queries.load(dialect)[name]
            assert not re.findall(r"'([a-z_]+\.[a-z_]+)'", query), (dialect, name)
    opening = {a for a in audit.Action if review.opens(AuditRecord(a, "invoice", "i", {}))}
    assert set(REVIEW_ACTIONS) == set(audit.REVIEW_ACTIONS) == opening


# -- refused credentials ---------------------------------------------------------------------------------------
def test_refused_credentials_keep_the_circuit_open_until_a_request_succeeds() -> None:
    metrics = Metrics(providers=PROVIDERS)
    for provider in PROVIDERS:
        assert value(samples(metrics), "reconciler_provider_credentials_refused", provider=provider) == 0
    refused = nothing_due()
    refused.degraded["btcpay_main"] = "authentication failed"
    metrics.credentials("btcpay_main", "HTTP 401: the API key was revoked")
    metrics.pass_finished(refused, PROVIDERS, {"btcpay_main"})

    # the next passes have nothing due for it: no request, no news, still refused
    for _ in range(2):
        metrics.pass_finished(nothing_due(), PROVIDERS, set())
        found = samples(metrics)
        assert value(found, "reconciler_circuit_open", provider="btcpay_main") == 1
        assert value(found, "reconciler_provider_credentials_refused", provider="btcpay_main") == 1
        assert value(found, "reconciler_circuit_open", provider="shop_zaprite") == 0
        assert value(found, "reconciler_provider_credentials_refused", provider="shop_zaprite") == 0
    assert metrics.refused == {"btcpay_main": "HTTP 401: the API key was revoked"}

    metrics.credentials("btcpay_main", None)  # a later request to it succeeded
    found = samples(metrics)
    assert value(found, "reconciler_provider_credentials_refused", provider="btcpay_main") == 0
    assert value(found, "reconciler_circuit_open", provider="btcpay_main") == 0
    metrics.pass_finished(nothing_due(), PROVIDERS, set())
    assert value(samples(metrics), "reconciler_circuit_open", provider="btcpay_main") == 0
    assert metrics.refused == {}


def test_a_circuit_the_runner_reports_open_is_open_whatever_the_credentials_say() -> None:
    metrics = Metrics(providers=PROVIDERS)
    metrics.pass_finished(nothing_due(), PROVIDERS, {"shop_zaprite"})
    assert value(samples(metrics), "reconciler_circuit_open", provider="shop_zaprite") == 1
    metrics.pass_finished(nothing_due(), PROVIDERS, set())
    assert value(samples(metrics), "reconciler_circuit_open", provider="shop_zaprite") == 0


# -- docs/operations.md ----------------------------------------------------------------------------------------
def metrics_section() -> str:
    text = (REPO / "docs" / "operations.md").read_text()
    return text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]


def test_the_operations_guide_lists_every_series_and_every_label_value() -> None:
    section = metrics_section()
    documented = set(re.findall(r"^\| `(reconciler_\w+)` \|", section, re.MULTILINE))
    metrics = Metrics(providers=PROVIDERS)
    metrics.backlog(report(), T, PROVIDERS)
    exposed = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        if family.name.startswith("reconciler_") and not family.name.endswith("_created"):
            exposed.add(family.name + ("_total" if family.type == "counter" else ""))
    assert documented == exposed
    for label_value in (*DECISION_KINDS, *REQUEST_OUTCOMES, *TASK_STATUSES, *PASS_RESULTS, *REVIEW_ACTIONS):
        assert f"`{label_value}`" in section, label_value


_SELECTOR = re.compile(r"(\w+\(\s*)?(reconciler_\w+)(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def matches(labels: frozenset[tuple[str, str]], matchers: str) -> bool:
    have = dict(labels)
    for label, op, wanted in _MATCHER.findall(matchers):
        got = have.get(label, "")
        ok = {
            "=": got == wanted,
            "!=": got != wanted,
            "=~": re.fullmatch(wanted, got) is not None,
            "!~": re.fullmatch(wanted, got) is None,
        }[op]
        if not ok:
            return False
    return True


def test_every_example_alert_selects_series_that_exist_before_their_first_event() -> None:
    """Selectors under increase() or rate() need a 0 sample from start-up; the others (gauges compared
    with a threshold) need a sample once the first pass has refreshed them."""
    alerts = metrics_section().split("Example alerts:", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    exprs = re.findall(r"expr: \|?\s*(.+?)(?=\n\s+- alert:|\Z)", alerts, re.DOTALL)
    assert len(exprs) >= 8
    at_start = samples(Metrics(providers=PROVIDERS))
    after_pass = Metrics(providers=PROVIDERS)
    after_pass.pass_finished(nothing_due(), PROVIDERS, set())
    after_pass.backlog(report(), T, PROVIDERS)
    refreshed = samples(after_pass)
    checked = 0
    for expr in exprs:
        for function, name, matchers in _SELECTOR.findall(expr):
            counted = function.strip().rstrip("(").strip() in {"increase", "rate"}
            found = at_start if counted else refreshed
            hits = [v for (n, labels), v in found.items() if n == name and matches(labels, matchers or "")]
            assert hits, f"{name}{{{matchers}}} in {expr!r} selects nothing"
            if counted:
                assert all(v == 0 for v in hits), expr
            checked += 1
    assert checked >= 10
