"""The store's SQL is written once (issue 11): one file for both dialects, named parts for what several queries
share, per-dialect text only where the engines differ, and a line saying what each block is for."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from reconciler.store import queries


def _sql_files() -> dict[str, str]:
    """Every .sql file of the store package and of its migrations, by name."""
    found = {}
    for package in ("reconciler.store", "reconciler.store.migrations"):
        for entry in resources.files(package).iterdir():
            if entry.name.endswith(".sql"):
                found[entry.name] = entry.read_text(encoding="utf-8")
    assert "0002_operator_desk.sql" in found
    return found


def test_every_block_says_what_it_is_for() -> None:
    undescribed = []
    for name, text in _sql_files().items():
        lines = text.splitlines()
        for number, line in enumerate(lines):
            if re.match(r"--\s*(name|part):", line):
                following = lines[number + 1] if number + 1 < len(lines) else ""
                if not re.match(r"-- \S", following):
                    undescribed.append(f"{name}:{number + 1}: {line}")
    assert undescribed == []


def test_the_invoice_columns_and_the_candidate_filter_are_written_once() -> None:
    text = "\n".join(_sql_files().values())
    # one line of each, as it stands in the only place that may hold it
    assert len(re.findall(r"lease_until IS NULL OR (?:\w+\.)?lease_until < :now", text)) == 1
    assert len(re.findall(r"buyer_email, (?:\w+\.)?subscription_id, (?:\w+\.)?created_at", text)) == 1


def test_both_dialects_have_every_query() -> None:
    loaded = {dialect: queries.load(dialect) for dialect in queries.DIALECTS}
    names = set(loaded["sqlite"])
    assert names and all(set(found) == names for found in loaded.values())
    for dialect, found in loaded.items():
        for name, sql in found.items():
            assert sql and "{" not in sql and "\n--" not in sql, (dialect, name)


def test_only_the_engine_specific_text_differs() -> None:
    sqlite, postgres = queries.load("sqlite"), queries.load("postgres")
    assert "FOR UPDATE SKIP LOCKED" in postgres["claim"] and "FOR UPDATE" not in sqlite["claim"]
    assert "json_each(:provider_invoice_ids)" in sqlite["payment_rows"]
    assert "json_array_elements_text(:provider_invoice_ids)" in postgres["payment_rows"]
    same = {name for name in sqlite if sqlite[name] == postgres[name]}
    assert {"get_invoice", "renew_subscription", "insert_post_settle_task", "due_post_settle_tasks"} <= same


SAMPLE = """\
-- Comments before the first block are the file's own.

-- part: columns
-- The columns every reader wants.
id, name

-- part: lock_hint @sqlite
-- SQLite locks the file anyway.

-- part: lock_hint @postgres
-- Row locks on PostgreSQL.
FOR UPDATE

-- name: one
-- One row by id.
SELECT {columns} FROM t WHERE id = :id {lock_hint};

-- name: tables @sqlite
-- The tables.
SELECT name FROM sqlite_master;

-- name: tables @postgres
-- The tables.
SELECT table_name FROM information_schema.tables;
"""


def test_parts_and_overrides_are_put_together_per_dialect() -> None:
    assert queries.parse(SAMPLE, "sqlite") == {
        "one": "SELECT id, name FROM t WHERE id = :id",
        "tables": "SELECT name FROM sqlite_master",
    }
    assert queries.parse(SAMPLE, "postgres") == {
        "one": "SELECT id, name FROM t WHERE id = :id FOR UPDATE",
        "tables": "SELECT table_name FROM information_schema.tables",
    }


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("-- name: q\nSELECT 1;\n", "query q: the line after its header must say what it is for"),
        ("-- name: q\n-- One.\nSELECT 1;\n-- name: q\n-- Two.\nSELECT 2;\n", "query q is written twice"),
        ("-- name: q @sqlite\n-- One.\nSELECT 1;\n", "query q has no text for postgres"),
        (
            "-- name: q\n-- One.\nSELECT 1;\n-- name: q @sqlite\n-- Two.\nSELECT 2;\n",
            "query q is written twice",
        ),
        ("-- name: q @mysql\n-- One.\nSELECT 1;\n", "query q: unknown dialect 'mysql'"),
        ("-- name: q\n-- One.\nSELECT {nope};\n", "query q: no part named 'nope'"),
        ("-- part: p\n-- A part.\nx\n-- name: q\n-- One.\nSELECT 1;\n", "part p is used by no query"),
        ("-- part: p\n-- A part.\n{p}\n-- name: q\n-- One.\nSELECT {p};\n", "part p includes itself"),
        ("-- name: q\n-- Nothing but a description.\n", "query q has no SQL"),
    ],
)
def test_a_malformed_file_is_refused_naming_the_block(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        queries.parse(text, "sqlite")
