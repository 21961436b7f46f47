"""A database's schema as its engine reports it, to compare two databases: tables, columns with their types,
defaults and NOT NULL, constraints (CHECK, UNIQUE, PRIMARY and FOREIGN KEY) and indexes with their partial
predicates. Read with plain sqlite3 / asyncpg, never through the store under test."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

V1_SQL = Path(__file__).with_name("schema_v1.sql")

Catalogue = dict[str, Any]


def _normalized(sql: str | None) -> str | None:
    """SQL text with runs of whitespace as one space (SQLite keeps each statement as it was written)."""
    return None if sql is None else re.sub(r"\s+", " ", sql).strip()


def sqlite_catalogue(db: sqlite3.Connection) -> Catalogue:
    """Every table's definition (its CREATE statement holds its CHECKs), columns, foreign keys and indexes,
    and the schema_meta rows."""
    tables: Catalogue = {}
    for name, sql in db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
    ):
        indexes = {}
        for _, index, unique, origin, partial in db.execute(f"PRAGMA index_list({name})"):
            text = db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (index,)).fetchone()[0]
            columns = [row[2] for row in db.execute(f"PRAGMA index_info({index})")]
            # automatic indexes (UNIQUE, PRIMARY KEY) are named by their position: name them by what they hold
            key = index if text is not None else f"{origin}:{','.join(columns)}"
            indexes[key] = (unique, origin, partial, tuple(columns), _normalized(text))
        tables[name] = {
            "sql": _normalized(sql),
            "columns": [tuple(row) for row in db.execute(f"PRAGMA table_info({name})")],
            "foreign_keys": sorted(tuple(row[2:]) for row in db.execute(f"PRAGMA foreign_key_list({name})")),
            "indexes": indexes,
        }
    meta = [tuple(r) for r in db.execute("SELECT * FROM schema_meta")] if "schema_meta" in tables else []
    return {"tables": tables, "schema_meta": meta}


def sqlite_file_catalogue(path: Path) -> Catalogue:
    db = sqlite3.connect(path)
    try:
        return sqlite_catalogue(db)
    finally:
        db.close()


def sqlite_memory_catalogue(*scripts: str) -> Catalogue:
    """The catalogue of a fresh in-memory database the scripts were applied to, in order."""
    db = sqlite3.connect(":memory:")
    try:
        for script in scripts:
            db.executescript(script)
        return sqlite_catalogue(db)
    finally:
        db.close()


async def postgres_catalogue(conn: Any, schema: str) -> Catalogue:
    """The same for the tables of one PostgreSQL schema (its name taken out of what the server prints)."""
    columns = await conn.fetch(
        "SELECT table_name::text AS t, column_name::text AS c, ordinal_position AS n, data_type::text AS type,"
        " is_nullable::text AS nullable, column_default::text AS dflt"
        " FROM information_schema.columns WHERE table_schema = $1 ORDER BY 1, 3",
        schema,
    )
    constraints = await conn.fetch(
        "SELECT r.relname::text AS t, c.conname::text AS name, c.contype::text AS kind,"
        " pg_get_constraintdef(c.oid) AS def"
        " FROM pg_constraint AS c JOIN pg_class AS r ON r.oid = c.conrelid"
        " WHERE r.relnamespace = $1::regnamespace ORDER BY 1, 2",
        schema,
    )
    indexes = await conn.fetch(
        "SELECT tablename::text AS t, indexname::text AS name, indexdef AS def"
        " FROM pg_indexes WHERE schemaname = $1 ORDER BY 1, 2",
        schema,
    )
    tables: Catalogue = {}
    for r in columns:
        entry = tables.setdefault(r["t"], {"columns": [], "constraints": {}, "indexes": {}})
        entry["columns"].append((r["c"], r["n"], r["type"], r["nullable"], r["dflt"]))
    for r in constraints:
        tables[r["t"]]["constraints"][r["name"]] = (r["kind"], r["def"])
    for r in indexes:
        tables[r["t"]]["indexes"][r["name"]] = r["def"].replace(f"{schema}.", "")
    meta = [tuple(r) for r in await conn.fetch(f"SELECT * FROM {schema}.schema_meta")]
    return {"tables": tables, "schema_meta": meta}
