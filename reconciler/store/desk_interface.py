"""The part of the store interface (`base.Store`) behind the operator's desk: the actions of
reconciler/operator/actions.py (implemented in store/operator.py) and the review worklist (docs/review.md,
store/reviews.py)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime, timedelta

from reconciler.models import AuditRecord, Invoice, Unreadable
from reconciler.store.records import ProviderControl, ReviewItem


class DeskStore(abc.ABC):
    # -- operator actions (reconciler/operator/actions.py) -------------------------------------------------
    @abc.abstractmethod
    async def claim_invoice(
        self,
        invoice_id: str,
        *,
        owner: str,
        now: datetime,
        lease: timedelta,
        audits: tuple[AuditRecord, ...] = (),
    ) -> Invoice | Unreadable | None:
        """Lease one invoice whatever its schedule, age or status (compare-and-set on the lease), with
        `audits` in the same transaction; None (nothing written) when it does not exist or another instance
        holds its lease."""

    @abc.abstractmethod
    async def task_status(self, invoice_id: str, kind: str) -> str | None:
        """The status of one post-settle task (`pending`, `done`, `failed`), None when there is none."""

    @abc.abstractmethod
    async def retry_task(
        self, invoice_id: str, kind: str, *, now: datetime, audits: tuple[AuditRecord, ...]
    ) -> bool:
        """A failed post-settle task pending again, attempts from zero, due at `now`, with `audits`, in one
        transaction (compare-and-set on `failed`); False (nothing written) when it was not failed."""

    @abc.abstractmethod
    async def set_paused(
        self,
        provider_id: str,
        paused: bool,
        *,
        actor: str,
        reason: str | None,
        now: datetime,
        audits: tuple[AuditRecord, ...],
    ) -> bool:
        """Pause (or resume) a provider in `provider_controls` with `audits`, in one transaction; False
        (nothing written) when it already was (or was not paused)."""

    @abc.abstractmethod
    async def provider_controls(self) -> list[ProviderControl]:
        """Every provider an operator paused or resumed, by provider id."""

    # -- the review worklist (docs/review.md) ---------------------------------------------------------------
    @abc.abstractmethod
    async def open_review_items(self, *, limit: int, after: ReviewItem | None = None) -> list[ReviewItem]:
        """Up to `limit` open review items, oldest first (`opened_at`, then `id`); after `after` when given
        (keyset paging: pass the last item of the previous page)."""

    @abc.abstractmethod
    async def review_item(self, item_id: str) -> ReviewItem | None:
        """One review item by its id, whatever its status."""

    @abc.abstractmethod
    async def close_review_item(
        self,
        item_id: str,
        *,
        status: str,
        closed_by: str,
        reason: str,
        now: datetime,
        audits: Sequence[AuditRecord] = (),
    ) -> bool:
        """Close an open item as `dismissed` (a person: `closed_by` is `api-key:<id>` or `cli:<user>`) or
        `resolved`, compare-and-set on its being open, with `audits` in the same transaction: False
        (nothing written) when it was closed already (or is unknown)."""
