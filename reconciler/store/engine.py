"""What every use case of the SQL store stands on: named queries, transactions run again on contention, fenced
writes with their audit rows. Each dialect (`SqliteStore`, `PostgresStore`) supplies its connections and
transactions; the use cases (invoices.py, settle.py, tasks.py, reporting.py) are written once above them."""

from __future__ import annotations

import abc
import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol, TypeVar

import orjson
from loguru import logger

from reconciler import errors, ids, review
from reconciler.models import AuditRecord, Resolution
from reconciler.store import base
from reconciler.timeutil import format_ts

_T = TypeVar("_T")

#: A transaction the database aborted to break a deadlock or a serialization conflict is run again, up to
#: this many times in all, with a short jittered pause between tries (docs/reconcile.md §16: the store
#: survives contention).
CONTENTION_ATTEMPTS = 5


class Row(Protocol):
    """A result row: sqlite3.Row and asyncpg.Record both read by column name or position."""

    def __getitem__(self, key: str | int, /) -> Any: ...


class Tx(Protocol):
    """One open transaction, speaking named queries."""

    async def exec(self, name: str, params: dict[str, Any]) -> int:
        """Run a statement; the number of rows it changed."""
        ...

    async def returning(self, name: str, params: dict[str, Any]) -> list[Row]:
        """Run a statement and read the rows it returns."""
        ...

    async def exec_many(self, name: str, params: Sequence[dict[str, Any]]) -> None:
        """Run a statement once per parameter set, in as few round trips as the driver allows."""
        ...

    async def script(self, sql: str) -> None:
        """Run a script of statements without parameters (schema.sql)."""
        ...


class Engine(base.Store):
    @abc.abstractmethod
    def _transaction(self, what: str) -> AbstractAsyncContextManager[Tx]:
        """A write transaction (`what` names it in errors): committed when the block ends, rolled back on any
        exception."""

    @abc.abstractmethod
    async def _read(self, name: str, params: dict[str, Any]) -> list[Row]:
        """Run a read-only named query outside any explicit transaction."""

    @abc.abstractmethod
    async def _write_one(self, name: str, params: dict[str, Any]) -> int:
        """Run one statement as its own transaction (atomic by itself); the number of rows it changed."""

    async def _atomic(self, what: str, body: Callable[[Tx], Awaitable[_T]]) -> _T:
        """Run `body` in one write transaction; run it again (from the start, in a new transaction) when
        the database aborted it for contention. `body` must only talk to the database."""
        for attempt in range(1, CONTENTION_ATTEMPTS + 1):
            try:
                async with self._transaction(what) as tx:
                    return await body(tx)
            except errors.StoreContention as exc:
                if attempt == CONTENTION_ATTEMPTS:
                    raise
                logger.info("database contention ({}); running the transaction again", exc.message)
                await asyncio.sleep(random.uniform(0.01, 0.05) * attempt)
        raise AssertionError("unreachable")

    async def _statement(self, name: str, params: dict[str, Any]) -> int:
        """`_write_one`, run again on contention like `_atomic`."""
        for attempt in range(1, CONTENTION_ATTEMPTS + 1):
            try:
                return await self._write_one(name, params)
            except errors.StoreContention:
                if attempt == CONTENTION_ATTEMPTS:
                    raise
                await asyncio.sleep(random.uniform(0.01, 0.05) * attempt)
        raise AssertionError("unreachable")

    async def _fenced_write(
        self,
        name: str,
        params: dict[str, Any],
        *,
        audits: Sequence[AuditRecord],
        now: datetime,
        resolves: Sequence[Resolution] = (),
    ) -> bool:
        """One fenced UPDATE of the invoice `params["invoice_id"]`, its audit rows (with the review items they
        open) and the review items it resolves, all or nothing; False (nothing written) when fenced out.

        Without audits or resolutions the UPDATE is its own transaction: the common case costs no round trips
        around it."""
        if not audits and not resolves:
            return await self._statement(name, params) == 1

        async def write(tx: Tx) -> bool:
            if await tx.exec(name, params) != 1:
                return False
            await self._audit(tx, now, audits)
            await self._resolve(tx, now, [(params["invoice_id"], r) for r in resolves])
            return True

        return await self._atomic(name, write)

    async def _audit(self, tx: Tx, now: datetime, records: Sequence[AuditRecord]) -> None:
        """Audit rows, and in the same transaction the review item each review action opens (docs/review.md):
        one open item per invoice and kind, so an item already open stays as it is."""
        await self._audit_rows(tx, [(now, record) for record in records])

    async def _audit_rows(self, tx: Tx, records: Sequence[tuple[datetime, AuditRecord]]) -> None:
        """`_audit` for records of several moments (the settlements of one transaction), in one statement."""
        if not records:
            return
        rows = [
            {
                "id": ids.uuid7(now),
                "occurred_at": format_ts(now),
                "actor": record.actor,
                "action": record.action,
                "target_kind": record.target_kind,
                "target_id": record.target_id,
                "details": details_json(record.details),
            }
            for now, record in records
        ]
        await tx.exec_many("insert_audit", rows)
        items = [
            {
                "id": ids.uuid7(now),
                "invoice_id": record.target_id,
                "kind": record.action,
                "opened_at": row["occurred_at"],
                "audit_id": row["id"],
            }
            for (now, record), row in zip(records, rows, strict=True)
            if review.opens(record)
        ]
        if items:
            await tx.exec_many("open_review_item", items)

    async def _resolve(
        self,
        tx: Tx,
        now: datetime,
        resolutions: Sequence[tuple[str, Resolution]],
        *,
        closed_by: str = "reconciler",
    ) -> None:
        """Resolve the open review items these (invoice id, resolution) pairs name, if any are open; an
        operator's action closes them as that operator (`closed_by`)."""
        await self._resolve_rows(tx, [(now, invoice_id, r, closed_by) for invoice_id, r in resolutions])

    async def _resolve_rows(
        self, tx: Tx, resolutions: Sequence[tuple[datetime, str, Resolution, str]]
    ) -> None:
        """`_resolve` for (moment, invoice id, resolution, closed by) of several settlements, in one statement,
        for the invoices that have an open item at all (most have none: then one read is all it costs)."""
        if not resolutions:
            return
        wanted = sorted({invoice_id for _, invoice_id, _, _ in resolutions})
        found = await tx.returning("invoices_with_open_items", {"invoice_ids": param_json(wanted)})
        open_items = {str(row["invoice_id"]) for row in found}
        if not open_items:
            return
        await tx.exec_many(
            "resolve_review_item",
            [
                {
                    "invoice_id": invoice_id,
                    "kind": r.kind,
                    "reason": r.reason,
                    "now": format_ts(now),
                    "by": by,
                }
                for now, invoice_id, r, by in resolutions
                if invoice_id in open_items
            ],
        )


#: `audit_log.details` as the json module writes it, for what orjson cannot write
_DETAILS = json.JSONEncoder(sort_keys=True, default=str)
#: keys sorted; datetimes and dataclasses given to `default` (str), as the json module would
_DETAILS_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def details_json(details: object) -> str:
    """An audit row's `details` text: the JSON object json.dumps(details, sort_keys=True, default=str) would
    write, in orjson's compact form (no spaces, UTF-8 instead of \\u escapes), several times faster. What
    orjson cannot write (a key that is not a string, an integer past 64 bits, a lone surrogate) the json
    module writes."""
    try:
        return orjson.dumps(details, default=str, option=_DETAILS_OPTIONS).decode()
    except TypeError:
        return _DETAILS.encode(details)


def param_json(value: object) -> str:
    """A statement's JSON parameter (the rows of `json_each` / `json_to_recordset`, lists of ids): read by the
    database within the statement and never stored, so its spacing is free, and orjson writes it about ten
    times faster than the json module. What orjson cannot write (an integer past 64 bits, a lone surrogate)
    the json module writes."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


def fmt(value: datetime | None) -> str | None:
    """A timestamp parameter, NULL kept."""
    return format_ts(value) if value is not None else None
