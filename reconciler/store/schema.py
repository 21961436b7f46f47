"""Whether a database holds our schema: its version (schema_meta) and its shape against schema.sql itself."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from reconciler import errors
from reconciler.store import queries

#: The version schema.sql creates: version 1 with every migration applied (store/migrations/).
SCHEMA_VERSION = 4

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
        # version 2
        "review_items",
        "api_keys",
        "provider_controls",
        # version 4
        "webhook_deliveries",
    }
)


@dataclass(frozen=True, slots=True)
class Index:
    """An index or unique constraint as the database enforces it: what ON CONFLICT and lookups rely on."""

    table: str
    columns: tuple[str | None, ...]  # None: an expression, which never stands in for a column
    unique: bool
    #: a partial index (`WHERE ...`) covers only some rows: it never stands in for a whole one, nor the other
    #: way round (`ON CONFLICT ... WHERE` needs the partial one)
    partial: bool = False


@dataclass(frozen=True, slots=True)
class Added:
    """What one migration adds to the version before it: whole tables, and columns and indexes of older
    tables."""

    tables: frozenset[str] = frozenset()
    columns: frozenset[tuple[str, str]] = frozenset()
    indexes: frozenset[Index] = frozenset()


#: What each version added, so that the schema check knows what a database at an older version must hold (a
#: test compares this with what the migrations really add).
ADDED: Mapping[int, Added] = {
    2: Added(tables=frozenset({"review_items", "api_keys", "provider_controls"})),
    3: Added(
        indexes=frozenset(
            {
                Index("invoices", ("next_check_at", "created_at", "id"), False, True),  # invoices_due
                Index("invoices", ("created_at", "next_check_at"), False, True),  # invoices_due_early
            }
        )
    ),
    4: Added(tables=frozenset({"webhook_deliveries"})),
}


def _added_after(version: int) -> Added:
    later = [added for number, added in ADDED.items() if number > version]
    return Added(
        frozenset().union(*(a.tables for a in later)),
        frozenset().union(*(a.columns for a in later)),
        frozenset().union(*(a.indexes for a in later)),
    )


def tables_at(version: int) -> frozenset[str]:
    """Our tables at a schema version we know."""
    return OUR_TABLES - _added_after(version).tables


def check_schema(tables: set[str], versions: list[Any]) -> int | None:
    """Our schema version (this one or an older one we can migrate from) from the tables present and
    schema_meta's rows; None when nothing of ours exists."""
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
    if version > SCHEMA_VERSION:
        raise errors.SchemaError(
            f"the database schema is version {version} but this reconciler knows version {SCHEMA_VERSION}: "
            "upgrade the reconciler (a newer schema) or restore a matching backup"
        )
    if version < 1:
        raise errors.SchemaError(
            f"the database schema is version {version}, which no reconciler ever wrote: "
            "point database.url at the reconciler's database or restore it from a backup"
        )
    missing = tables_at(version) - tables
    if missing:
        raise errors.SchemaError(
            f"the database is missing reconciler tables: {', '.join(sorted(missing))}; restore it from a backup"
        )
    return version


def require_current(version: int) -> None:
    """SchemaOutdated for a database at an older version than this reconciler's (check_schema refused the
    others)."""
    if version < SCHEMA_VERSION:
        raise errors.SchemaOutdated(
            f"the database schema is version {version} but this reconciler needs version {SCHEMA_VERSION}: "
            "stop every instance, back the database up and run `reconciler migrate`",
            version=version,
        )


class _CatalogueRow(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


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
        """Rows of `(table_name, column_name)` and `(table_name, index_name, is_unique, origin, is_partial,
        position, column_name)` ordered by position; only our tables count."""
        columns = frozenset(
            (str(r["table_name"]), str(r["column_name"]))
            for r in column_rows
            if r["table_name"] in OUR_TABLES
        )
        found: dict[tuple[str, str], tuple[bool, str, bool, list[str | None]]] = {}
        for r in index_rows:
            table = str(r["table_name"])
            if table not in OUR_TABLES:
                continue
            key = (table, str(r["index_name"]))
            meta: tuple[bool, str, bool, list[str | None]] = (
                bool(r["is_unique"]),
                str(r["origin"]),
                bool(r["is_partial"]),
                [],
            )
            _, _, _, cols = found.setdefault(key, meta)
            cols.append(None if r["column_name"] is None else str(r["column_name"]))
        indexes: dict[Index, str] = {}
        for (table, name), (unique, origin, partial, cols) in found.items():
            index = Index(table, tuple(cols), unique, partial)
            listed = ", ".join(c or "(expression)" for c in cols)
            if origin == "pk":
                indexes[index] = f"PRIMARY KEY {table} ({listed})"
            elif origin == "c" or partial:
                kind = ("unique " if unique else "") + ("partial " if partial else "")
                indexes[index] = f"{kind}index {name} on {table} ({listed})"
            else:
                indexes[index] = f"UNIQUE {table} ({listed})"
        return cls(columns, indexes)


@functools.cache
def _newest_shape() -> SchemaShape:
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


@functools.cache
def expected_shape(version: int = SCHEMA_VERSION) -> SchemaShape:
    """What a database at `version` holds: schema.sql without what later migrations added (`ADDED`)."""
    newest = _newest_shape()
    later = _added_after(version)

    def kept(table: str, columns: Iterable[str | None]) -> bool:
        return table not in later.tables and not any((table, c) in later.columns for c in columns)

    return SchemaShape(
        frozenset((t, c) for t, c in newest.columns if kept(t, [c])),
        {
            index: label
            for index, label in newest.indexes.items()
            if kept(index.table, index.columns) and index not in later.indexes
        },
    )


#: How many missing things one error line lists before it counts the rest.
_LISTED = 6


def check_shape(actual: SchemaShape, version: int = SCHEMA_VERSION) -> None:
    """SchemaError naming each column and index a database at `version` must have and lacks (extra ones are
    fine)."""
    expected = expected_shape(version)
    missing = [f"column {t}.{c}" for t, c in sorted(expected.columns - actual.columns)]
    missing += sorted(label for index, label in expected.indexes.items() if index not in actual.indexes)
    if not missing:
        return
    shown = ", ".join(missing[:_LISTED]) + (
        f" and {len(missing) - _LISTED} more" if len(missing) > _LISTED else ""
    )
    source = "schema.sql" if version == SCHEMA_VERSION else f"schema version {version}"
    raise errors.SchemaError(
        f"the database schema lacks what {source} declares: {shown}; "
        f"restore the database from a backup or add exactly what {source} says"
    )
