"""Post-settle tasks (docs/reconcile.md §15): the due ones, one attempt taken by compare-and-set, its end
recorded."""

from __future__ import annotations

from datetime import datetime

from reconciler import review
from reconciler.store import base
from reconciler.store.engine import Engine, Tx, fmt
from reconciler.timeutil import format_ts


class TaskUseCases(Engine):
    async def due_tasks(self, *, now: datetime, batch_size: int) -> list[base.DueTask]:
        found = await self._read("due_post_settle_tasks", {"now": format_ts(now), "batch_size": batch_size})
        return [
            base.DueTask(
                invoice_id=r["invoice_id"],
                kind=r["kind"],
                provider_id=r["provider_id"],
                attempts=int(r["attempts"]),
                provider_invoice_id=r["provider_invoice_id"],
                subscription_id=r["subscription_id"],
                has_profile=r["payment_profile_id"] is not None,
            )
            for r in found
        ]

    async def claim_task(self, task: base.DueTask, *, now: datetime, lease_until: datetime) -> bool:
        params = {
            "invoice_id": task.invoice_id,
            "kind": task.kind,
            "attempts": task.attempts,
            "now": format_ts(now),
            "lease_until": format_ts(lease_until),
        }
        return await self._statement("claim_post_settle_task", params) == 1

    async def finish_task(self, task: base.DueTask, result: base.TaskResult, *, now: datetime) -> bool:
        stamp = format_ts(now)

        async def finish(tx: Tx) -> bool:
            changed = await tx.exec(
                "finish_post_settle_task",
                {
                    "invoice_id": task.invoice_id,
                    "kind": task.kind,
                    "attempts": task.attempts + 1,  # the attempt this instance claimed
                    "status": result.status,
                    "last_error": result.last_error,
                    "next_attempt_at": fmt(result.next_attempt_at),
                    "now": stamp,
                },
            )
            if changed != 1:
                return False
            if result.profile is not None and task.subscription_id is not None:
                profile = result.profile
                await tx.exec(
                    "store_payment_profile",
                    {
                        "subscription_id": task.subscription_id,
                        "contact_id": profile.contact_id,
                        "profile_id": profile.profile_id,
                        "method": profile.method,
                        "expires_at": profile.expires_at,
                        "now": stamp,
                    },
                )
            if result.audit is not None:
                await self._audit(tx, now, [result.audit])
            if result.status == "done":
                done = review.task_done(task.kind)
                await tx.exec(
                    "resolve_task_review_item",
                    {"invoice_id": task.invoice_id, "kind": done.kind, "reason": done.reason, "now": stamp},
                )
            return True

        return await self._atomic("finish_task", finish)
