"""Prometheus metrics (docs/cli.md §5.4). Our names start with `reconciler_` (beside the client library's
standard `process_*` and `python_*` ones); provider ids are the `provider` label.

`Metrics` observes the runner through the `runner.Observer` hooks and keeps its own registry, so tests (and
several runners in one process) never share counters.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import choose_encoder

from reconciler import __version__, audit, breaker, traffic
from reconciler.decide import DecisionKind
from reconciler.runner import FENCED, RELEASED, Observer, PassSummary
from reconciler.store.base import StatusReport

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_PASS_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0)

#: Label values every series starts with, at 0: an alert on `increase(...)` needs a sample before the first
#: event. `-` is the provider of invoices and tasks with no provider id (and no `default_provider`).
NO_PROVIDER = "-"
DECISION_KINDS = (*(str(kind) for kind in DecisionKind), FENCED, RELEASED)
REQUEST_OUTCOMES = traffic.REQUEST_OUTCOMES
TASK_STATUSES = ("done", "pending", "failed")
PASS_RESULTS = ("ok", "degraded")
#: The audit actions that open review items (`reconciler status` counts the open ones).
REVIEW_ACTIONS = tuple(str(action) for action in audit.REVIEW_ACTIONS)


_WEBHOOK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics(Observer):
    def __init__(self, registry: CollectorRegistry | None = None, *, providers: Iterable[str] = ()) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        Gauge(
            "reconciler_build_info",
            "Always 1: the running reconciler and Python versions",
            ["version", "python"],
            registry=r,
        ).labels(__version__, platform.python_version()).set(1)
        self.decisions = Counter(
            "reconciler_decisions", "Invoice decisions by provider and kind", ["provider", "kind"], registry=r
        )
        self.requests = Counter(
            "reconciler_provider_requests",
            "Provider requests (each attempt) by outcome",
            ["provider", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "reconciler_provider_request_seconds",
            "Provider request latency",
            ["provider"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.pass_seconds = Histogram(
            "reconciler_pass_duration_seconds",
            "Duration of a reconcile pass",
            buckets=_PASS_BUCKETS,
            registry=r,
        )
        self.passes = Counter("reconciler_passes", "Reconcile passes by result", ["result"], registry=r)
        self.last_pass = Gauge(
            "reconciler_last_pass_timestamp_seconds", "When the last pass finished (unix time)", registry=r
        )
        self.pending = Gauge(
            "reconciler_pending_invoices",
            "Pending invoices still checked, by provider",
            ["provider"],
            registry=r,
        )
        self.oldest = Gauge(
            "reconciler_oldest_pending_age_seconds",
            "Age of the oldest pending invoice",
            ["provider"],
            registry=r,
        )
        self.stale = Gauge(
            "reconciler_pending_not_checked_invoices", "Pending invoices older than max_age", registry=r
        )
        self.circuit = Gauge(
            "reconciler_circuit_open",
            "1 while a provider's circuit is open: credentials refused, no request succeeded since",
            ["provider"],
            registry=r,
        )
        self.refused_credentials = Gauge(
            "reconciler_provider_credentials_refused",
            "1 from a provider's refusal of our credentials until a later request to it succeeds",
            ["provider"],
            registry=r,
        )
        #: provider id -> why its credentials were refused, until a later request to it succeeds
        self.refused: dict[str, str] = {}
        self.breaker_state = Gauge(
            "reconciler_provider_breaker_state",
            "A provider's outage circuit: 0 closed, 1 half-open (its next request is a probe), 2 open "
            "(no requests until its cool-down ends)",
            ["provider"],
            registry=r,
        )
        #: provider id -> its outage circuit's state, as last reported
        self.circuits: dict[str, str] = {}
        self.tasks = Counter(
            "reconciler_post_settle_tasks",
            "Post-settle task attempts by result",
            ["provider", "status"],
            registry=r,
        )
        self.review = Gauge(
            "reconciler_review_items",
            "Open review items, by kind (the audit action that opened them; as `reconciler status`)",
            ["action"],
            registry=r,
        )
        self.paused = Gauge(
            "reconciler_provider_paused",
            "1 while an operator has paused the provider (`reconciler provider pause`): its invoices wait",
            ["provider"],
            registry=r,
        )
        self.webhooks = Counter(
            "reconciler_webhooks",
            "Webhook deliveries by provider and outcome (docs/webhooks.md §3); provider `-` for an unknown id",
            ["provider", "outcome"],
            registry=r,
        )
        self.webhook_seconds = Histogram(
            "reconciler_webhook_decision_seconds",
            "Seconds from a webhook's arrival to its invoice's decision being committed",
            ["provider"],
            buckets=_WEBHOOK_BUCKETS,
            registry=r,
        )
        self._backlog_labels: set[str] = set()
        self._review_labels: set[str] = set(REVIEW_ACTIONS)
        self.initialise(providers)

    def initialise(self, providers: Iterable[str]) -> None:
        """Create every labelled series of these configured provider ids at 0 (idempotent)."""
        providers = tuple(providers)
        for result in PASS_RESULTS:
            self.passes.labels(result)
        for provider in providers:
            self.paused.labels(provider)
            for outcome in REQUEST_OUTCOMES:
                self.requests.labels(provider, outcome)
            self.latency.labels(provider)
            self.circuit.labels(provider).set(1 if provider in self.refused else 0)
            self.refused_credentials.labels(provider).set(1 if provider in self.refused else 0)
            self.breaker_state.labels(provider).set(
                breaker.CIRCUIT_GAUGE[self.circuits.get(provider, "closed")]
            )
        for provider in (*providers, NO_PROVIDER):
            for kind in DECISION_KINDS:
                self.decisions.labels(provider, kind)
            for status in TASK_STATUSES:
                self.tasks.labels(provider, status)

    # -- runner.Observer ----------------------------------------------------------------------------------
    def decision(self, provider_id: str | None, kind: str) -> None:
        self.decisions.labels(provider_id or NO_PROVIDER, kind).inc()

    def request(self, provider_id: str, outcome: str, seconds: float) -> None:
        self.requests.labels(provider_id, outcome).inc()
        self.latency.labels(provider_id).observe(seconds)

    def webhook(self, provider_id: str, outcome: str) -> None:
        self.webhooks.labels(provider_id, outcome).inc()

    def webhook_decided(self, provider_id: str, seconds: float) -> None:
        self.webhook_seconds.labels(provider_id).observe(seconds)

    def task(self, provider_id: str | None, status: str) -> None:
        self.tasks.labels(provider_id or NO_PROVIDER, status).inc()

    def credentials(self, provider_id: str, refused: str | None) -> None:
        if refused is None:
            self.refused.pop(provider_id, None)
        else:
            self.refused[provider_id] = refused
        flag = 0 if refused is None else 1
        self.refused_credentials.labels(provider_id).set(flag)
        self.circuit.labels(provider_id).set(flag)

    def breaker(self, provider_id: str, state: str) -> None:
        self.circuits[provider_id] = state
        self.breaker_state.labels(provider_id).set(breaker.CIRCUIT_GAUGE[state])

    def pass_finished(self, summary: PassSummary, providers: list[str], circuits_open: set[str]) -> None:
        self.pass_seconds.observe(summary.duration)
        self.passes.labels("degraded" if summary.is_degraded else "ok").inc()
        if summary.finished_at is not None:
            self.last_pass.set(summary.finished_at.timestamp())
        for provider in providers:
            # A pass with nothing due for a refused provider asks it nothing: the refusal still stands.
            is_open = provider in circuits_open or provider in self.refused
            self.circuit.labels(provider).set(1 if is_open else 0)
        # An open circuit turns half-open when its cool-down ends, which no request reports.
        for provider, circuit in summary.circuits.items():
            if circuit.get("state") in breaker.CIRCUIT_GAUGE:
                self.breaker(provider, circuit["state"])

    # -- from the store -----------------------------------------------------------------------------------
    def backlog(self, report: StatusReport, now: datetime, providers: list[str]) -> None:
        seen = set()
        for row in report.pending:
            label = row.provider_id or "-"
            seen.add(label)
            self.pending.labels(label).set(row.pending)
            oldest = row.oldest_created_at  # None: the oldest row's created_at cannot be read
            self.oldest.labels(label).set(max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
        # Zero configured providers and every label of an earlier refresh (NULL "-", unconfigured ids):
        # a gauge left at its last value would keep a backlog alert firing after the backlog is gone.
        for label in (set(providers) | self._backlog_labels) - seen:
            self.pending.labels(label).set(0)
            self.oldest.labels(label).set(0)
        self._backlog_labels = seen | set(providers)
        self.stale.set(report.no_longer_checked)
        paused = {c.provider_id for c in report.paused}
        for label in set(providers) | paused:
            self.paused.labels(label).set(1 if label in paused else 0)
        counts = {r.kind: r.count for r in report.review}
        self._review_labels |= set(counts)
        for action in self._review_labels:
            self.review.labels(action).set(counts.get(action, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The body and its full content type (format version included) for a scraper's Accept header:
        OpenMetrics when asked for, the Prometheus text format otherwise."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
