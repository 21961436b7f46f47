"""The store interface: every database read and write the reconciler makes, as use cases.

SQL lives behind this interface only (one `.sql` file per dialect, the same query names in each). Writes to an
invoice are compare-and-set on its status and fenced by the lease token of the claim that read it, so a writer
whose lease was taken over changes nothing; issuance is made exactly-once by `UNIQUE(licenses.invoice_id)`.
"""

from __future__ import annotations

import abc
import functools
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from reconciler import errors
from reconciler.driver_api import PaymentProfile
from reconciler.models import (
    AuditRecord,
    Invoice,
    InvoiceStatus,
    LicenseDraft,
    PaymentRow,
    Policy,
    SubscriptionDraft,
    Unreadable,
    UnreadablePolicy,
)
from reconciler.store import queries

__all__ = [
    "AuditRecord",
    "PaymentRow",
    "Unreadable",
    "UnreadablePolicy",
]  # re-exported: part of the store interface

#: What a claim, a peek or a lookup hands back for one row: readable, or quarantined with the reason.
Row = Invoice | Unreadable

SCHEMA_VERSION = 1

#: `reconciler_instances` rows whose last pass is older than this are deleted by later passes.
INSTANCE_RETENTION = timedelta(days=7)

#: Tables schema.sql creates; the database is "ours" when `schema_meta` holds one row.
OUR_TABLES = frozenset(
    {
        "schema_meta",
        "products",
        "policies",
        "invoices",
        "licenses",
        "subscriptions",
        "discount_codes",
        "discount_redemptions",
        "audit_log",
        "post_settle_tasks",
        "reconciler_instances",
    }
)


@dataclass(frozen=True, slots=True)
class PaymentKey:
    """One payment at a provider: every row whose provider id (NULL counted as `default_provider` when
    `include_null`) and provider invoice id are these is the same payment (SPEC §4.1, one payment, one
    license)."""

    provider_id: str
    provider_invoice_id: str
    include_null: bool


@dataclass(frozen=True, slots=True)
class DuplicateFound:
    """The settle transaction found that another row of the same payment is the one to settle."""

    winner_id: str


@dataclass(frozen=True, slots=True)
class Settlement:
    """Everything the settle transaction of SPEC §4.8 writes (or the recovery of §4.1 when `recovered`).

    `audits` are the invoice-targeted rows the decision made (`invoice.settled`, `invoice.paid_late`,
    `invoice.amount_mismatch`); the store adds `license.issued`, `code.redeemed` and `subscription.renewed`,
    which depend on what the transaction finds.
    """

    now: datetime
    next_check_at: datetime
    observation: str | None
    provider_id: str | None
    audits: tuple[AuditRecord, ...]
    license: LicenseDraft | None  # None for a renewal invoice
    subscription: SubscriptionDraft | None  # only for a recurring policy
    post_settle_kinds: tuple[str, ...] = ()
    recovered: bool = False
    #: set when other rows may be the same payment: checked again under a lock inside the transaction
    payment: PaymentKey | None = None


@dataclass(frozen=True, slots=True)
class SettleOutcome:
    """What the settle transaction found and wrote (`license_id` is ours or the one already there)."""

    license_id: str | None
    license_issued: bool
    subscription_created: bool
    redemption_redeemed: bool
    subscription_renewed: bool = False


@dataclass(frozen=True, slots=True)
class TransitionOutcome:
    """What the expire / invalidate transaction did besides the status."""

    redemption_cancelled: bool


@dataclass(frozen=True, slots=True)
class DueTask:
    """A pending post-settle task (SPEC §8) with what running it needs."""

    invoice_id: str
    kind: str
    provider_id: str | None
    attempts: int
    provider_invoice_id: str
    subscription_id: str | None
    has_profile: bool


@dataclass(frozen=True, slots=True)
class TaskResult:
    """How one claimed attempt ended: `done`, still `pending` (retry at `next_attempt_at`) or `failed`."""

    status: str
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    profile: PaymentProfile | None = None
    audit: AuditRecord | None = None


@dataclass(frozen=True, slots=True)
class InstanceRow:
    """A `reconciler_instances` row: one running process and its last pass."""

    lease_owner: str
    hostname: str
    pid: int
    started_at: datetime
    last_pass_started_at: datetime | None = None
    last_pass_finished_at: datetime | None = None
    last_summary: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PendingByProvider:
    """Pending invoices still checked (created within `max_age`) for one provider id."""

    provider_id: str | None
    pending: int
    oldest_created_at: datetime | None  # None when the oldest row's timestamp cannot be read


@dataclass(frozen=True, slots=True)
class Quarantined:
    """An invoice held back for a person: unreadable, or a duplicate of another row of its payment."""

    invoice_id: str
    kind: str  # "unreadable" or "duplicate"
    detail: str  # the column, or the row that won
    since: datetime | None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """What `reconciler status` shows: backlog, instances and audit actions for review."""

    pending: tuple[PendingByProvider, ...]
    no_longer_checked: int
    instances: tuple[InstanceRow, ...]
    review: tuple[tuple[str, int, datetime], ...] = field(default=())
    #: invoices quarantined now (at most `QUARANTINE_LISTED` of them) and how many there are in all
    quarantined: tuple[Quarantined, ...] = field(default=())
    quarantined_total: int = 0
    #: instances left out of `instances` because their last pass started before `instances_since`
    other_instances: int = 0


#: How many quarantined invoices `status` lists by id (the count covers the rest).
QUARANTINE_LISTED = 50


class Store(abc.ABC):
    """A reconciler database. Implementations: `SqliteStore`; PostgreSQL follows the same contract."""

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
    async def schema_shape(self) -> SchemaShape:
        """The columns and indexes the database's tables have now."""

    async def require_schema(self) -> None:
        """Raise SchemaError unless the database holds our schema, at a version we know, whole."""
        if await self.schema_version() is None:
            raise errors.SchemaError(
                "the database has no reconciler schema: create it with `reconciler init-db`"
            )
        check_shape(await self.schema_shape())

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
    ) -> list[Row]:
        """Lease up to `batch_size` due candidates (SPEC §4.1), oldest due first; rows that cannot be read
        come back as `Unreadable`, still leased."""

    @abc.abstractmethod
    async def peek(
        self, *, pass_start: datetime, now: datetime, max_age: timedelta, batch_size: int, offset: int
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
    ) -> bool:
        """No status change: schedule, last check (unless not `checked`: no provider was asked),
        observation and its audits. False when fenced out."""

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
    ) -> TransitionOutcome | None:
        """Expire or invalidate (SPEC §4.7) in one transaction; None when another writer got there first."""

    @abc.abstractmethod
    async def record_settlement(
        self, invoice: Invoice, settlement: Settlement
    ) -> SettleOutcome | DuplicateFound | None:
        """The settle (or recovery) transaction of SPEC §4.8; None when another writer got there first,
        `DuplicateFound` (nothing written) when another row of the same payment is the one to settle."""

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
        """Backlog per provider, instances and recent audit actions that need review."""

    @abc.abstractmethod
    async def invoice_audits(self, invoice_id: str) -> list[dict[str, Any]]:
        """The audit rows about one invoice, oldest first."""


def check_schema(tables: set[str], versions: list[Any]) -> int | None:
    """Our schema version from the tables present and schema_meta's rows; None when nothing of ours exists."""
    ours = tables & OUR_TABLES
    if not ours:
        return None
    if "schema_meta" not in tables:
        raise errors.SchemaError(
            f"the database has some reconciler tables ({', '.join(sorted(ours))}) but no schema_meta: "
            "it is not a reconciler database, or a half-finished one; restore it or start from an empty database"
        )
    if len(versions) != 1 or not isinstance(versions[0], int):
        raise errors.SchemaError(
            "schema_meta does not hold exactly one version row: this database is not ours; "
            "point database.url at the reconciler's database"
        )
    version = int(versions[0])
    if version != SCHEMA_VERSION:
        raise errors.SchemaError(
            f"the database schema is version {version} but this reconciler knows version {SCHEMA_VERSION}: "
            "upgrade the reconciler (a newer schema) or restore a matching backup"
        )
    missing = OUR_TABLES - tables
    if missing:
        raise errors.SchemaError(
            f"the database is missing reconciler tables: {', '.join(sorted(missing))}; restore it from a backup"
        )
    return version


class _CatalogueRow(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Index:
    """An index or unique constraint as the database enforces it: what ON CONFLICT and lookups rely on."""

    table: str
    columns: tuple[str | None, ...]  # None: an expression, which never stands in for a column
    unique: bool


@dataclass(frozen=True, slots=True)
class SchemaShape:
    """Columns and indexes per table, from the `schema_columns` / `schema_indexes` queries of a dialect."""

    columns: frozenset[tuple[str, str]]
    #: each index with how an error names it (`UNIQUE licenses (invoice_id)`, `index audit_log_target ...`)
    indexes: Mapping[Index, str]

    @classmethod
    def from_rows(
        cls, column_rows: Iterable[_CatalogueRow], index_rows: Iterable[_CatalogueRow]
    ) -> SchemaShape:
        """Rows of `(table_name, column_name)` and `(table_name, index_name, is_unique, origin, position,
        column_name)` ordered by position; only our tables count."""
        columns = frozenset(
            (str(r["table_name"]), str(r["column_name"]))
            for r in column_rows
            if r["table_name"] in OUR_TABLES
        )
        found: dict[tuple[str, str], tuple[bool, str, list[str | None]]] = {}
        for r in index_rows:
            table = str(r["table_name"])
            if table not in OUR_TABLES:
                continue
            key = (table, str(r["index_name"]))
            _, _, cols = found.setdefault(key, (bool(r["is_unique"]), str(r["origin"]), []))
            cols.append(None if r["column_name"] is None else str(r["column_name"]))
        indexes: dict[Index, str] = {}
        for (table, name), (unique, origin, cols) in found.items():
            index = Index(table, tuple(cols), unique)
            listed = ", ".join(c or "(expression)" for c in cols)
            if origin == "pk":
                indexes[index] = f"PRIMARY KEY {table} ({listed})"
            elif origin == "c":
                indexes[index] = f"{'unique ' if unique else ''}index {name} on {table} ({listed})"
            else:
                indexes[index] = f"UNIQUE {table} ({listed})"
        return cls(columns, indexes)


@functools.cache
def expected_shape() -> SchemaShape:
    """What schema.sql declares, read back from an in-memory SQLite database it was applied to."""
    sql = queries.load("sqlite")
    db = sqlite3.connect(":memory:")
    try:
        db.row_factory = sqlite3.Row
        db.executescript(queries.schema_sql())
        return SchemaShape.from_rows(
            db.execute(sql["schema_columns"]).fetchall(), db.execute(sql["schema_indexes"]).fetchall()
        )
    finally:
        db.close()


#: How many missing things one error line lists before it counts the rest.
_LISTED = 6


def check_shape(actual: SchemaShape) -> None:
    """SchemaError naming each column and index of schema.sql the database lacks (extra ones are fine)."""
    expected = expected_shape()
    missing = [f"column {t}.{c}" for t, c in sorted(expected.columns - actual.columns)]
    missing += sorted(label for index, label in expected.indexes.items() if index not in actual.indexes)
    if not missing:
        return
    shown = ", ".join(missing[:_LISTED]) + (
        f" and {len(missing) - _LISTED} more" if len(missing) > _LISTED else ""
    )
    raise errors.SchemaError(
        f"the database schema lacks what schema.sql declares: {shown}; "
        "restore the database from a backup or add exactly what schema.sql says"
    )
