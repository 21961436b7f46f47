"""The dry run (docs/reconcile.md §12): every provider read of a pass and no write.

It classifies through the runner's own classification (so it agrees with a pass on every decision,
`issue_failed` and quarantine included), takes no lease and needs no signing key; each verdict becomes one
line (invoice, provider, current status, raw status, decision, evidence).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from reconciler import settlement
from reconciler.models import Invoice, Unreadable
from reconciler.passes import PassState, PassSummary, RunnerSettings
from reconciler.store import base
from reconciler.timeutil import Clock
from reconciler.traffic import Failure
from reconciler.verdicts import Decided, Duplicate, Quarantine, Skip, Unanswered, Verdict, kind_of

Emit = Callable[[dict[str, Any]], None]


class Classifier(Protocol):
    """What the dry run needs of the runner's classification."""

    def begin(self) -> PassState: ...

    def finish(self, p: PassState) -> PassSummary: ...

    async def duplicates(self, batch: Sequence[base.Row]) -> dict[str, str]: ...

    def classify(
        self, p: PassState, row: base.Row, lease_until: datetime | None, winners: Mapping[str, str]
    ) -> Awaitable[Verdict]: ...


async def dry_run(
    classifier: Classifier,
    store: base.Store,
    settings: RunnerSettings,
    emit: Emit,
    *,
    clock: Clock,
    only: base.Row | None = None,
) -> PassSummary:
    """Classify every candidate (or `only` that row) and emit one line each; nothing is written."""
    p = classifier.begin()

    async def one(row: base.Row, winners: Mapping[str, str]) -> None:
        verdict = await classifier.classify(p, row, None, winners)
        if isinstance(verdict, Quarantine):
            p.quarantined.add(verdict.row.label if isinstance(verdict.row, Unreadable) else verdict.row.id)
        p.summary.count(verdict.provider_id, kind_of(verdict))
        emit(line(row, verdict))

    if only is not None:
        await one(only, await classifier.duplicates([only]))
        return classifier.finish(p)
    offset = 0
    while True:
        page = await store.peek(
            pass_start=p.started_at,
            now=clock(),
            max_age=settings.max_age,
            batch_size=settings.batch_size,
            offset=offset,
            default_provider=settings.default_provider,
        )
        if not page:
            break
        offset += len(page)
        winners = await classifier.duplicates(page)
        async with asyncio.TaskGroup() as group:
            for row in page:
                group.create_task(one(row, winners))
    return classifier.finish(p)


def line(row: base.Row, verdict: Verdict) -> dict[str, Any]:
    """One dry-run line (docs/audit.md §4): `invoice_id`, `provider_id`, `status`, `raw_status`,
    `raw_additional_status`, `decision`, `evidence`."""
    out: dict[str, Any] = {
        "invoice_id": row.label if isinstance(row, Unreadable) else row.id,
        "provider_id": verdict.provider_id,
        "status": row.status.value if isinstance(row, Invoice) else None,
        "raw_status": None,
        "raw_additional_status": None,
    }
    evidence: dict[str, Any] = {}
    if isinstance(verdict, Quarantine):
        evidence = {"column": verdict.column, "reason": verdict.reason}
        if verdict.policy_id:
            evidence["policy_id"] = verdict.policy_id
    elif isinstance(verdict, Duplicate):
        evidence = {"winner_invoice_id": verdict.winner_id}
    elif isinstance(verdict, Skip):
        evidence = {"reason": verdict.reason}
    elif isinstance(verdict, Unanswered):
        if isinstance(verdict.failure, Failure):
            evidence = {"error": verdict.failure.message}
    elif verdict.decision is not None:
        decision = verdict.decision
        evidence = dict(decision.evidence)
        evidence["audits"] = [a.action for a in decision.audits]
        if decision.new_status is not None:
            evidence["new_status"] = decision.new_status.value
        out["raw_status"] = evidence.get("raw_status")
        out["raw_additional_status"] = evidence.get("raw_additional_status")
    if isinstance(verdict, Decided) and isinstance(verdict.plan, settlement.IssueFailed):
        evidence["error"] = verdict.plan.reason
    out["decision"] = str(kind_of(verdict))
    out["evidence"] = evidence
    return out
