"""Whether a database holds our schema: its version (schema_meta) and its shape against schema.sql itself."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from reconciler import errors
from reconciler.store import queries

SCHEMA_VERSION = 1

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
