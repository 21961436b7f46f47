"""Named SQL blocks loaded from a dialect's `.sql` file (`-- name: <query>` headers)."""

from __future__ import annotations

import re
from importlib import resources

_HEADER = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Map each block's name to its SQL (comments before the first header are ignored)."""
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        sql = "\n".join(line for line in body.strip().splitlines() if not line.lstrip().startswith("--"))
        queries[name] = sql.strip().rstrip(";")
    return queries


def load(filename: str) -> dict[str, str]:
    return parse(resources.files("reconciler.store").joinpath(filename).read_text(encoding="utf-8"))


def schema_sql() -> str:
    return resources.files("reconciler").joinpath("schema.sql").read_text(encoding="utf-8")
