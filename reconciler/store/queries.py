"""The store's named queries, put together per dialect from the one file `queries.sql`.

A block starts with `-- name: <query>` (a query the store runs) or `-- part: <part>` (SQL that queries and
other parts include as `{part}`), and the line after its header says what it is for. A block serves every
dialect unless it is written once per dialect, as `-- name: <query> @sqlite`, `... @postgres`. Other lines
starting with `--` are comments. A malformed file is a ValueError naming the block.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

DIALECTS = ("sqlite", "postgres")

_HEADER = re.compile(r"^--\s*(name|part):\s*([a-z_][a-z0-9_]*)(?:\s+@(\S+))?\s*$", re.MULTILINE)
_INCLUDE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_DESCRIPTION = re.compile(r"--\s+\S")


@dataclass(frozen=True, slots=True)
class _Block:
    kind: str  # "query" or "part"
    name: str
    dialect: str | None  # None: every dialect
    sql: str


def parse(text: str, dialect: str) -> dict[str, str]:
    """Each query's SQL for `dialect`, parts included; the whole file is checked for every dialect."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}")
    blocks = _blocks(text)
    parts = _by_dialect(blocks, "part")
    queries = _by_dialect(blocks, "query")
    used: set[str] = set()
    rendered = {
        each: {
            name: _expand(f"query {name}", texts[each], parts, each, used, frozenset())
            for name, texts in queries.items()
        }
        for each in DIALECTS
    }
    unused = sorted(set(parts) - used)
    if unused:
        raise ValueError(f"part {unused[0]} is used by no query")
    return rendered[dialect]


def _expand(
    where: str,
    sql: str,
    parts: Mapping[str, Mapping[str, str]],
    dialect: str,
    used: set[str],
    seen: frozenset[str],
) -> str:
    """`sql` with each `{part}` replaced by the part's text for `dialect` (itself expanded)."""

    def include(match: re.Match[str]) -> str:
        part = match.group(1)
        if part in seen:
            raise ValueError(f"part {part} includes itself")
        if part not in parts:
            raise ValueError(f"{where}: no part named {part!r}")
        used.add(part)
        return _expand(f"part {part}", parts[part][dialect], parts, dialect, used, seen | {part})

    return _INCLUDE.sub(include, sql).strip()


def _blocks(text: str) -> list[_Block]:
    pieces = _HEADER.split(text)
    found = []
    # pieces: text before the first header, then (name|part, name, dialect, body) per block
    for index in range(1, len(pieces), 4):
        kind = "query" if pieces[index] == "name" else "part"
        name, dialect, body = pieces[index + 1], pieces[index + 2], pieces[index + 3]
        lines = body.splitlines()[1:]  # [0] is the rest of the header's line
        if not lines or not _DESCRIPTION.match(lines[0]):
            raise ValueError(
                f"{kind} {name}: the line after its header must say what it is for (a `-- ` comment)"
            )
        if dialect is not None and dialect not in DIALECTS:
            raise ValueError(f"{kind} {name}: unknown dialect {dialect!r}")
        sql = "\n".join(line for line in lines[1:] if not line.lstrip().startswith("--"))
        sql = sql.strip().rstrip(";").rstrip()
        if kind == "query" and not sql:
            raise ValueError(f"query {name} has no SQL")
        found.append(_Block(kind, name, dialect, sql))
    return found


def _by_dialect(blocks: list[_Block], kind: str) -> dict[str, dict[str, str]]:
    """Name -> dialect -> SQL, each name written once for every dialect or once per dialect."""
    texts: dict[str, dict[str | None, str]] = {}
    for block in blocks:
        if block.kind != kind:
            continue
        written = texts.setdefault(block.name, {})
        if block.dialect in written or None in written or (block.dialect is None and written):
            raise ValueError(f"{kind} {block.name} is written twice")
        written[block.dialect] = block.sql
    result: dict[str, dict[str, str]] = {}
    for name, written in texts.items():
        if None in written:
            result[name] = dict.fromkeys(DIALECTS, written[None])
            continue
        missing = [dialect for dialect in DIALECTS if dialect not in written]
        if missing:
            raise ValueError(f"{kind} {name} has no text for {', '.join(missing)}")
        result[name] = {dialect: written[dialect] for dialect in DIALECTS}
    return result


@functools.cache
def _load(dialect: str) -> Mapping[str, str]:
    text = resources.files("reconciler.store").joinpath("queries.sql").read_text(encoding="utf-8")
    return parse(text, dialect)


def load(dialect: str) -> dict[str, str]:
    """The store's queries for `dialect` ("sqlite" or "postgres")."""
    return dict(_load(dialect))


def schema_sql() -> str:
    return resources.files("reconciler").joinpath("schema.sql").read_text(encoding="utf-8")
