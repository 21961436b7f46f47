"""What the operator sees and what instances leave behind: `reconciler_instances`, `status`, `explain`."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from reconciler.store import base, rows
from reconciler.store.engine import Engine, Row, Tx, fmt
from reconciler.timeutil import format_ts, parse_ts


class Reporting(Engine):
    async def upsert_instance(self, row: base.InstanceRow) -> None:
        async def upsert(tx: Tx) -> None:
            await tx.exec("upsert_instance", _instance_params(row))
            if row.last_pass_finished_at is not None:
                # one row per process: a timer's `--once` runs would pile up forever without this
                cutoff = row.last_pass_finished_at - base.INSTANCE_RETENTION
                await tx.exec(
                    "prune_instances", {"cutoff": format_ts(cutoff), "lease_owner": row.lease_owner}
                )

        await self._atomic("upsert_instance", upsert)

    async def status_report(
        self, *, now: datetime, max_age: timedelta, instances_since: datetime | None = None
    ) -> base.StatusReport:
        min_created = format_ts(now - max_age)
        since = fmt(instances_since)
        pending = await self._read("status_pending", {"min_created_at": min_created})
        stale = await self._read("status_stale", {"min_created_at": min_created})
        instances = await self._read("status_instances", {"since": since})
        others = await self._read("status_other_instances", {"since": since})
        review = await self._read("status_review", {})
        held = await self._read("status_quarantined", {"limit": base.QUARANTINE_LISTED})
        held_total = await self._read("status_quarantined_count", {})
        return base.StatusReport(
            pending=tuple(base.PendingByProvider(r[0], int(r[1]), rows.lenient_ts(r[2])) for r in pending),
            no_longer_checked=int(stale[0][0]),
            instances=tuple(_instance(r) for r in instances),
            review=tuple(
                base.ReviewCount(str(r[0]), int(r[1]), rows.lenient_ts(r[2]), rows.lenient_ts(r[3]))
                for r in review
            ),
            quarantined=tuple(_quarantined(r) for r in held),
            quarantined_total=int(held_total[0][0]),
            other_instances=int(others[0][0]),
            paused=tuple(c for c in await self.provider_controls() if c.paused),
        )

    async def invoice_audits(self, invoice_id: str) -> list[dict[str, Any]]:
        found = await self._read("invoice_audits", {"invoice_id": invoice_id})
        return [
            {
                "occurred_at": r["occurred_at"],
                "action": r["action"],
                "target_kind": r["target_kind"],
                "target_id": r["target_id"],
                "details": json.loads(r["details"]),
            }
            for r in found
        ]


def _quarantined(row: Row) -> base.Quarantined:
    observation = str(row["last_provider_status"])
    kind, _, detail = observation.removeprefix("!").partition(":")
    return base.Quarantined(str(row["id"]), kind, detail, rows.lenient_ts(row["since"]))


def _instance_params(row: base.InstanceRow) -> dict[str, Any]:
    return {
        "lease_owner": row.lease_owner,
        "hostname": row.hostname,
        "pid": row.pid,
        "started_at": format_ts(row.started_at),
        "last_pass_started_at": fmt(row.last_pass_started_at),
        "last_pass_finished_at": fmt(row.last_pass_finished_at),
        "last_summary": json.dumps(row.last_summary, sort_keys=True)
        if row.last_summary is not None
        else None,
    }


def _instance(row: Row) -> base.InstanceRow:
    return base.InstanceRow(
        lease_owner=row["lease_owner"],
        hostname=row["hostname"],
        pid=int(row["pid"]),
        started_at=parse_ts(row["started_at"]),
        last_pass_started_at=_ts(row["last_pass_started_at"]),
        last_pass_finished_at=_ts(row["last_pass_finished_at"]),
        last_summary=json.loads(row["last_summary"]) if row["last_summary"] else None,
    )


def _ts(value: Any) -> datetime | None:
    return parse_ts(value) if value is not None else None
