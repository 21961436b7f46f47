"""The store interface: every database read and write the reconciler makes, as use cases.

SQL lives behind this interface only (store/queries.sql). Writes to an invoice are compare-and-set on its status
and fenced by the lease token of the claim that read it, so a writer whose lease was taken over changes nothing;
issuance is made exactly-once by `UNIQUE(licenses.invoice_id)`.

The values the interface speaks (store/records.py, store/schema.py, the rows of reconciler/models.py) are
importable from here as well: callers need only this module.

The review worklist (docs/review.md, table `review_items`): the store opens an item in the transaction that
writes the audit row of a review action (one open item per invoice and kind: `ON CONFLICT DO NOTHING`), and
resolves items in the transaction of the change that clears them (the `resolves` of `record_check`,
`record_transition`, `CheckWrite` and `Settlement`; a license issued; a post-settle task done). For callers:

- `open_review_items(limit=, after=)`: the open items, oldest first, keyset-paged;
- `review_item(item_id)`: one item, open or closed;
- `close_review_item(item_id, status="dismissed", closed_by=, reason=, now=)`: compare-and-set on
  `status = 'open'`; True when this call closed it.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from reconciler import errors
from reconciler.models import (
    AuditRecord,
    Invoice,
    InvoiceStatus,
    PaymentRow,
    Policy,
    Resolution,
    Unreadable,
    UnreadablePolicy,
)
from reconciler.store import schema
from reconciler.store.api_interface import ApiStore
from reconciler.store.desk_interface import DeskStore
from reconciler.store.records import (
    INSTANCE_RETENTION,
    QUARANTINE_LISTED,
    ApiKeyRow,
    CheckWrite,
    DueTask,
    DuplicateFound,
    InstanceRow,
    InvoiceFilter,
    Migrated,
    PageRequest,
    PaymentKey,
    PendingByProvider,
    ProviderControl,
    Quarantined,
    ReleaseWrite,
    ReviewCount,
    ReviewItem,
    Settlement,
    SettleOutcome,
    StatusReport,
    TaskResult,
)
from reconciler.store.schema import OUR_TABLES, SCHEMA_VERSION
from reconciler.store.webhook_interface import DeliveryReceipt, DeliveryRecord, InvoiceLease, WebhookStore

__all__ = [
    "INSTANCE_RETENTION",
    "OUR_TABLES",
    "QUARANTINE_LISTED",
    "SCHEMA_VERSION",
    "ApiKeyRow",
    "AuditRecord",
    "CheckWrite",
    "DeliveryReceipt",
    "DeliveryRecord",
    "DueTask",
    "DuplicateFound",
    "InstanceRow",
    "InvoiceFilter",
    "InvoiceLease",
    "Migrated",
    "PageRequest",
    "PaymentKey",
    "PaymentRow",
    "PendingByProvider",
    "ProviderControl",
    "Quarantined",
    "ReleaseWrite",
    "Resolution",
    "ReviewCount",
    "ReviewItem",
    "Row",
    "SettleOutcome",
    "Settlement",
    "StatusReport",
    "Store",
    "TaskResult",
    "Unreadable",
    "UnreadablePolicy",
]

#: What a claim, a peek or a lookup hands back for one row: readable, or quarantined with the reason.
Row = Invoice | Unreadable


class Store(ApiStore, DeskStore, WebhookStore):
    """A reconciler database: `SqliteStore` and `PostgresStore` (both `sql.SqlStore`)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""

    # -- schema -------------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def schema_version(self) -> int | None:
        """Our schema version, or None when none of our tables exist; SchemaError when it is not ours."""

    @abc.abstractmethod
    async def init_schema(self) -> bool:
        """Create the schema when none of our tables exist (True); do nothing at a known version (False)."""

    @abc.abstractmethod
    async def schema_shape(self) -> schema.SchemaShape:
        """The columns and indexes the database's tables have now."""

    @abc.abstractmethod
    async def migrate(self) -> Migrated:
        """Apply the migrations a database of ours lacks, in order, each in its own transaction, one process
        at a time (docs/schema.md §6); SchemaError for a database without our schema, or not ours."""

    async def require_schema(self) -> None:
        """Raise SchemaError unless the database holds our schema, at this reconciler's version, whole;
        SchemaOutdated (a SchemaError) at an older version."""
        version = await self.schema_version()
        if version is None:
            raise errors.SchemaError(
                "the database has no reconciler schema: create it with `reconciler init-db`"
            )
        schema.require_current(version)
        schema.check_shape(await self.schema_shape())

    # -- reconcile pass -----------------------------------------------------------------------------------
    @abc.abstractmethod
    async def claim(
        self,
        *,
        owner: str,
        pass_start: datetime,
        now: datetime,
        lease: timedelta,
        max_age: timedelta,
        batch_size: int,
        default_provider: str | None = None,
        recovery: Sequence[str] | None = None,
    ) -> list[Row]:
        """Lease up to `batch_size` due candidates (docs/reconcile.md §1), oldest due first; rows that cannot
        be read come back as `Unreadable`, still leased. Invoices of a paused provider (`provider_controls`;
        a row without a provider id is `default_provider`'s) are not candidates. The settled invoices without
        a license among the candidates are those of `recovery` still in that state (a pass looks them up
        once with `recovery_candidates`); None looks them up now."""

    @abc.abstractmethod
    async def recovery_candidates(
        self,
        *,
        pass_start: datetime,
        now: datetime,
        max_age: timedelta,
        batch_size: int,
        default_provider: str | None = None,
    ) -> list[str]:
        """The ids of up to `batch_size` settled invoices without a license that are candidates
        (docs/reconcile.md §1), in claim order, leasing nothing."""

    @abc.abstractmethod
    async def peek(
        self,
        *,
        pass_start: datetime,
        now: datetime,
        max_age: timedelta,
        batch_size: int,
        offset: int,
        default_provider: str | None = None,
    ) -> list[Row]:
        """The candidates `claim` would take, without leasing them (dry run)."""

    @abc.abstractmethod
    async def get_invoice(self, invoice_id: str) -> Row | None:
        """One invoice by `invoices.id`, without leasing it."""

    @abc.abstractmethod
    async def find_invoices(self, provider_invoice_id: str, provider_id: str | None) -> list[Row]:
        """The invoices with this provider invoice id (of this provider id when given), oldest first."""

    @abc.abstractmethod
    async def release(self, invoice: Row, *, next_check_at: datetime | None) -> bool:
        """Clear the lease without any other change (but `next_check_at` when given)."""

    @abc.abstractmethod
    async def release_all(self, rows: Sequence[Row]) -> int:
        """Clear the leases of `rows` that are still ours, in one transaction; how many were."""

    @abc.abstractmethod
    async def record_bookkeeping(
        self, checks: Sequence[CheckWrite], releases: Sequence[ReleaseWrite]
    ) -> set[str]:
        """Several no-change checks and lease releases in one transaction (two statements however many
        rows), each fenced by its row's lease token; the ids written (the others were fenced out)."""

    @abc.abstractmethod
    async def record_quarantine(
        self,
        row: Row,
        *,
        next_check_at: datetime,
        observation: str,
        audits: Sequence[AuditRecord],
        now: datetime,
    ) -> bool:
        """Hold back a row for a person: schedule, observation, audits; nothing else. False when fenced."""

    @abc.abstractmethod
    async def payment_rows(self, keys: Sequence[PaymentKey]) -> list[PaymentRow]:
        """Every row of each payment in `keys`, in one round trip."""

    @abc.abstractmethod
    async def record_check(
        self,
        invoice: Invoice,
        *,
        now: datetime,
        next_check_at: datetime,
        observation: str | None,
        audits: Sequence[AuditRecord] = (),
        checked: bool = True,
        resolves: Sequence[Resolution] = (),
    ) -> bool:
        """No status change: schedule, last check (unless not `checked`: no provider was asked),
        observation, its audits and the review items it resolves. False when fenced out."""

    @abc.abstractmethod
    async def record_transition(
        self,
        invoice: Invoice,
        *,
        new_status: InvoiceStatus,
        now: datetime,
        next_check_at: datetime,
        observation: str | None,
        audits: Sequence[AuditRecord],
        resolves: Sequence[Resolution] = (),
    ) -> bool:
        """Expire or invalidate (docs/reconcile.md §7) in one transaction, the discount slot given back once,
        the review items it resolves closed; False when another writer got there first."""

    @abc.abstractmethod
    async def record_settlement(
        self, invoice: Invoice, settlement: Settlement
    ) -> SettleOutcome | DuplicateFound | None:
        """The settle (or recovery) transaction of docs/reconcile.md §8; None when another writer got there
        first, `DuplicateFound` (nothing written) when another row of the same payment is the one to
        settle."""

    @abc.abstractmethod
    async def record_settlements(
        self, items: Sequence[tuple[Invoice, Settlement]]
    ) -> list[SettleOutcome | DuplicateFound | None]:
        """Several settle transactions committed as one: each item's outcome as `record_settlement` would
        give it, in order. All or nothing for the whole group (a failure writes none of them), so never
        half of one settlement."""

    @abc.abstractmethod
    async def policies_for(
        self, invoice: Invoice
    ) -> tuple[Policy | UnreadablePolicy | None, list[Policy | UnreadablePolicy]]:
        """The invoice's own policy (active or not) and its product's active policies, each readable or
        not."""

    @abc.abstractmethod
    async def license_of(self, invoice_id: str) -> dict[str, Any] | None:
        """The license row of an invoice (id, status, issued_at, expires_at, policy_id), if any."""

    @abc.abstractmethod
    async def redemption_status(self, invoice_id: str) -> str | None:
        """The status of the invoice's discount redemption, or None when it has none."""

    # -- post-settle tasks --------------------------------------------------------------------------------
    @abc.abstractmethod
    async def due_tasks(self, *, now: datetime, batch_size: int) -> list[DueTask]:
        """Pending post-settle tasks whose next attempt is due."""

    @abc.abstractmethod
    async def claim_task(self, task: DueTask, *, now: datetime, lease_until: datetime) -> bool:
        """Take one attempt (`attempts` compare-and-set); False when another instance took it."""

    @abc.abstractmethod
    async def finish_task(self, task: DueTask, result: TaskResult, *, now: datetime) -> bool:
        """Record the attempt's end (and the payment profile on the subscription) in one transaction."""

    # -- instances and reporting --------------------------------------------------------------------------
    @abc.abstractmethod
    async def upsert_instance(self, row: InstanceRow) -> None:
        """Record this process and its pass; a finished pass also prunes long-gone instances."""

    @abc.abstractmethod
    async def status_report(
        self, *, now: datetime, max_age: timedelta, instances_since: datetime | None = None
    ) -> StatusReport:
        """Backlog per provider, instances and the open review items per kind."""

    @abc.abstractmethod
    async def invoice_audits(self, invoice_id: str) -> list[dict[str, Any]]:
        """The audit rows about one invoice, oldest first."""
