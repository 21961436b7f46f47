"""The real `reconciler` command in a subprocess against a seeded SQLite shop and the scripted `fake` driver.

The `fake` driver (tests/plugins/fake-driver) is found through its entry point, never imported: a config
names it `driver = "fake"` and its `script_path` JSON file says what the provider answers per invoice.
The daemon's clock is real time, so invoices are seeded a few minutes before `datetime.now(UTC)`.
"""

from __future__ import annotations

import gc
import json
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler import licenses
from tests.support.process import clean_env, minutes_ago
from tests.support.shop import Shop, create_schema

#: The command under test; every call gets a timeout so a hang fails the test instead of the run.
COMMAND = (sys.executable, "-m", "reconciler")
TIMEOUT = 60.0
#: Variables that would change what the command does behind the test's back.

Outcomes = Mapping[str, list[dict[str, Any]]]
SETTLED: dict[str, Any] = {"status": "SETTLED", "raw_status": "Settled", "amount_sats": 10_000}
EXPIRED: dict[str, Any] = {"status": "EXPIRED", "raw_status": "Expired", "amount_sats": 10_000}
INVALID: dict[str, Any] = {"status": "INVALID", "raw_status": "Invalid", "amount_sats": 10_000}
PENDING: dict[str, Any] = {"status": "PENDING", "raw_status": "New", "amount_sats": 10_000}


def recent(minutes: float = 10) -> datetime:
    """A creation time well inside the default `max_age`."""
    return minutes_ago(minutes)


def toml(data: Mapping[str, Any]) -> str:
    """`data` as TOML: scalars first, then one table per nested mapping (JSON values are valid TOML)."""
    lines: list[str] = []

    def table(prefix: str, values: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, Mapping)}
        if prefix and (scalars or not values):
            lines.append(f"[{prefix}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in scalars.items())
        for key, value in values.items():
            if isinstance(value, Mapping):
                table(f"{prefix}.{key}" if prefix else key, value)

    table("", data)
    return "\n".join(lines) + "\n"


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` laid over it, table by table; an override of None removes the key."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class Outcome:
    """How one command ended."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        """The non-empty stderr lines (the log)."""
        return [line for line in self.stderr.splitlines() if line.strip()]

    def __str__(self) -> str:
        return f"{' '.join(self.args)} -> {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def reconciler(*args: str | Path, timeout: float = TIMEOUT, cwd: Path | None = None) -> Outcome:
    """Run `reconciler ARGS...` to its end."""
    argv = tuple(str(a) for a in args)
    done = subprocess.run(
        [*COMMAND, *argv], capture_output=True, text=True, env=clean_env(), timeout=timeout, cwd=cwd
    )
    return Outcome(argv, done.returncode, done.stdout, done.stderr)


def start(*args: str | Path) -> subprocess.Popen[str]:
    """Start `reconciler ARGS...` without waiting; the caller must `communicate(timeout=...)`."""
    return subprocess.Popen(
        [*COMMAND, *(str(a) for a in args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )


def file_state(path: Path) -> dict[str, bytes]:
    """The bytes of a SQLite database and its journal files, to prove a command wrote nothing.

    Whatever sits in a WAL file is checkpointed into the database first, so the same content always gives
    the same bytes; a rollback-journal database (somebody else's) is only read.
    """
    gc.collect()  # `with sqlite3.connect()` does not close: let the collector close what seeding left open
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        db = sqlite3.connect(path)
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()
    siblings = (path, wal, path.with_name(path.name + "-journal"))
    return {p.name: p.read_bytes() for p in siblings if p.exists() and p.stat().st_size}


@dataclass
class Workspace:
    """A temporary directory holding a shop database with our schema, a signing key and a driver script."""

    root: Path
    db: Path
    key: Path
    script: Path
    shop: Shop

    def base_config(self) -> dict[str, Any]:
        return {
            "database": {"url": f"sqlite://{self.db}"},
            "license": {"signing_key_file": str(self.key)},
            "providers": {"fake": {"driver": "fake", "script_path": str(self.script)}},
        }

    def config(self, overrides: Mapping[str, Any] | None = None, *, name: str = "config.toml") -> Path:
        """Write the base config with `overrides` merged in (see :func:`merged`); its path."""
        path = self.root / name
        path.write_text(toml(merged(self.base_config(), overrides or {})), encoding="utf-8")
        return path

    def answers(self, outcomes: Outcomes) -> None:
        """What the fake provider answers: provider invoice id (or "*") -> outcomes, the last repeating."""
        self.script.write_text(json.dumps(outcomes), encoding="utf-8")

    def run(self, *args: str | Path, config: Path | None = None, timeout: float = TIMEOUT) -> Outcome:
        """`reconciler --config CONFIG ARGS...` (the base config unless given)."""
        return reconciler("--config", config or self.config(), *args, timeout=timeout)

    def state(self) -> dict[str, bytes]:
        return file_state(self.db)


def make_workspace(root: Path) -> Workspace:
    """A shop database with our schema, a fresh signing key (mode 0600) and a provider that says "New"."""
    root.mkdir(parents=True, exist_ok=True)
    db = root / "shop.db"
    create_schema(db)
    key = root / "signing-key.pem"
    key.write_bytes(licenses.private_pem(licenses.generate_signing_key()))
    key.chmod(0o600)
    ws = Workspace(root, db, key, root / "script.json", Shop(db))
    ws.answers({"*": [PENDING]})
    return ws


def assert_refused(outcome: Outcome, *needles: str, code: int = 2) -> None:
    """Exit `code` with exactly one stderr line, which contains every needle."""
    assert outcome.returncode == code, outcome
    assert len(outcome.lines) == 1, outcome
    for needle in needles:
        assert needle in outcome.lines[0], outcome


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path)
