"""The numbered schema migrations (docs/schema.md §6), one file each: `NNNN_<what>.sql` takes a database at
version NNNN - 1 to version NNNN.

A file is written like store/queries.sql: a block `-- name: upgrade` (or one per dialect, `@sqlite` and
`@postgres`, where the engines differ), which may include `-- part:` blocks; the comment lines above the first
block say what the migration is for. Version 1 is `schema.sql` as release 0.1 shipped it and has no file: a
database is created at the newest version from `schema.sql` directly (`init-db`), and a test proves that
`schema.sql` equals version 1 with every migration applied in order.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

from reconciler.store import queries

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration as a dialect runs it."""

    version: int  # the version the database is at once it ran
    name: str  # the file's name
    script: str  # its statements, `;`-terminated


@functools.cache
def _texts() -> tuple[tuple[int, str, str], ...]:
    found = []
    for entry in resources.files(__name__).iterdir():
        match = _FILE.match(entry.name)
        if match is None:
            continue
        found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [version for version, _, _ in found]
    if versions != list(range(2, len(found) + 2)):
        raise ValueError(f"migrations must be numbered 0002, 0003, ... without gaps; found {versions}")
    return tuple(found)


def load(dialect: str) -> list[Migration]:
    """Every migration, in order, as `dialect` ("sqlite" or "postgres") runs it."""
    migrations = []
    for version, name, text in _texts():
        try:
            blocks = queries.parse(text, dialect)
        except ValueError as exc:
            raise ValueError(f"migration {name}: {exc}") from exc
        if set(blocks) != {"upgrade"}:
            raise ValueError(
                f"migration {name} must hold exactly one query, `upgrade`; found {sorted(blocks)}"
            )
        migrations.append(Migration(version, name, blocks["upgrade"] + ";"))
    return migrations


def newest() -> int:
    """The version a database is at with every migration applied."""
    return 1 + len(_texts())
