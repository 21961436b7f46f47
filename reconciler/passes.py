"""What a pass is configured with, what it keeps while it runs, and what it reports.

`RunnerSettings` are the `[reconcile]` / `[post_settle]` rules of a pass; `PassState` is everything one pass
(or dry run) keeps while it runs, a new one each time; `PassSummary` is what it reports (the summary line,
`reconciler_instances.last_summary`); `Observer` is how metrics watch it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from reconciler import decide
from reconciler.breaker import Breaker
from reconciler.decide import DecisionKind
from reconciler.store import base
from reconciler.timeutil import format_ts
from reconciler.traffic import ProviderGate

#: Extra counters beside the decision kinds: rows another writer changed first, rows released untouched.
FENCED = "fenced"
RELEASED = "released"
#: Every kind an invoice can leave a pass with (metrics create each series up front).
KINDS: tuple[str, ...] = (*(kind.value for kind in DecisionKind), FENCED, RELEASED)
#: The summary's `degraded` key for rows the store could not read (beside provider ids).
UNREADABLE_ROWS = "invoices"


class Observer:
    """Hooks the runner calls as it works (metrics implement them); this base ignores everything."""

    def decision(self, provider_id: str | None, kind: str) -> None:
        """An invoice left the pass with this decision kind."""

    def request(self, provider_id: str, outcome: str, seconds: float) -> None:
        """One provider request (one attempt) ended with this outcome."""

    def task(self, provider_id: str | None, status: str) -> None:
        """A post-settle task attempt ended: done, pending (retry later) or failed."""

    def credentials(self, provider_id: str, refused: str | None) -> None:
        """A provider refused our credentials (`refused` says why), or a later request to it succeeded
        (`None`). Called on every change; the state outlives the pass that saw it."""

    def breaker(self, provider_id: str, state: str) -> None:
        """A provider's outage circuit changed state: `open`, `half_open` (a probe sent) or `closed`."""

    def pass_finished(self, summary: PassSummary, providers: list[str], circuits_open: set[str]) -> None:
        """A pass ended; `circuits_open` holds every provider whose circuit opened in it or whose
        credentials are still refused."""


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """The `[reconcile]` settings a pass needs, plus `default_provider`."""

    max_age: timedelta = timedelta(hours=72)
    batch_size: int = 500
    paid_late: decide.PaidLatePolicy = "flag"
    schedule: tuple[timedelta, ...] = (
        timedelta(minutes=1),
        timedelta(minutes=5),
        timedelta(minutes=15),
        timedelta(minutes=60),
    )
    interval: timedelta = timedelta(seconds=60)
    lease: timedelta = timedelta(minutes=5)
    default_provider: str | None = None
    post_settle_max_attempts: int = 8
    post_settle_backoff: tuple[timedelta, ...] = (
        timedelta(minutes=1),
        timedelta(minutes=5),
        timedelta(minutes=15),
        timedelta(hours=1),
    )


@dataclass
class PassSummary:
    started_at: datetime
    finished_at: datetime | None = None
    claimed: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    by_provider: dict[str, Counter[str]] = field(default_factory=dict)
    degraded: dict[str, str] = field(default_factory=dict)
    tasks: Counter[str] = field(default_factory=Counter)
    #: each provider's outage circuit as the pass ended (`Breaker.describe`)
    circuits: dict[str, dict[str, str]] = field(default_factory=dict)

    def count(self, provider_id: str | None, kind: str) -> None:
        self.counts[kind] += 1
        self.by_provider.setdefault(provider_id or "-", Counter())[kind] += 1

    @property
    def duration(self) -> float:
        end = self.finished_at or self.started_at
        return (end - self.started_at).total_seconds()

    @property
    def is_degraded(self) -> bool:
        return bool(self.degraded)

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_at": format_ts(self.started_at),
            "finished_at": format_ts(self.finished_at) if self.finished_at else None,
            "duration_seconds": round(self.duration, 3),
            "claimed": self.claimed,
            "counts": dict(sorted(self.counts.items())),
            "by_provider": {p: dict(sorted(c.items())) for p, c in sorted(self.by_provider.items())},
            "degraded": dict(sorted(self.degraded.items())),
            "post_settle": dict(sorted(self.tasks.items())),
            "circuits": dict(sorted(self.circuits.items())),
        }

    def line(self) -> str:
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "nothing due"
        if self.tasks:
            counts += " post_settle(" + " ".join(f"{k}={v}" for k, v in sorted(self.tasks.items())) + ")"
        suffix = (
            f" DEGRADED({', '.join(f'{p}: {r}' for p, r in sorted(self.degraded.items()))})"
            if self.degraded
            else ""
        )
        return f"pass finished in {self.duration:.2f}s: {counts}{suffix}"


@dataclass
class PassState:
    """Everything one pass (or dry run) keeps while it runs; a new one per pass."""

    started_at: datetime
    summary: PassSummary
    gates: dict[str, ProviderGate] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)
    policies: dict[tuple[str, str | None], tuple[Any, list[Any]]] = field(default_factory=dict)
    #: leased rows not yet recorded, by id: released whatever ends the pass
    held: dict[Any, base.Row] = field(default_factory=dict)
    quarantined: set[str] = field(default_factory=set)
    warned_no_provider: bool = False
    done: int = 0
    #: rows released untouched: a claim that found nothing is tried again after one of these
    returned: int = 0
    #: settled invoices without a license found as the pass began, not claimed yet (docs/reconcile.md §1)
    recovery: list[str] = field(default_factory=list)
    #: whether that lookup was cut at batch_size: it is made again once a claim finds nothing else
    recovery_cut: bool = False

    @classmethod
    def starting(cls, started_at: datetime) -> PassState:
        return cls(started_at, PassSummary(started_at=started_at))

    def finish(self, finished_at: datetime, breakers: Mapping[str, Breaker] | None = None) -> PassSummary:
        """The summary, with why the pass is degraded and each of `breakers`' circuits: one not closed
        degrades the pass even when nothing of its provider was due."""
        summary = self.summary
        summary.finished_at = finished_at
        for gate in self.gates.values():
            reason = gate.degraded()
            if reason is not None:
                summary.degraded[gate.provider.id] = reason
        for provider_id, breaker in (breakers or {}).items():
            summary.circuits[provider_id] = breaker.describe()
            held_back = breaker.reason()
            if held_back is not None and provider_id not in summary.degraded:
                summary.degraded[provider_id] = held_back
        if self.quarantined:
            summary.degraded[UNREADABLE_ROWS] = f"{len(self.quarantined)} unreadable row(s) quarantined"
        return summary

    def circuits_open(self, refused: set[str]) -> set[str]:
        return {g.provider.id for g in self.gates.values() if g.circuit_open} | refused
