"""Opening a SQLite database checks the file before anything uses it, and leaves nothing open when it fails
(issue 10 item 3): a file that is not a database, an unopenable path, a directory."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler import errors
from reconciler.store.sqlite import SqliteStore


async def _left_running(before: set[threading.Thread]) -> set[threading.Thread]:
    """aiosqlite connection threads started since `before` and still alive after a short grace."""
    for _ in range(50):
        extra = {
            t
            for t in threading.enumerate()
            if t not in before and t.is_alive() and "_connection_worker_thread" in t.name
        }
        if not extra:
            break
        await asyncio.sleep(0.02)
    return extra


def _content(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def _siblings(folder: Path) -> list[str]:
    """-wal, -shm or -journal files next to the database: a failed open must leave none."""
    return sorted(p.name for p in folder.glob("shop.db-*"))


def _text_file(path: Path) -> Path:
    path.write_text("hello\n")
    return path


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


def _in_missing_directory(path: Path) -> Path:
    return path / "no" / "such" / "dir" / "shop.db"


CASES: dict[str, tuple[Callable[[Path], Path], type[errors.ReconcilerError], str]] = {
    "text-file": (_text_file, errors.SchemaError, "is not a SQLite database"),
    "directory": (_directory, errors.ConfigError, "cannot open SQLite database"),
    "missing-directory": (_in_missing_directory, errors.ConfigError, "cannot open SQLite database"),
}


@pytest.mark.parametrize("create", [False, True], ids=["open", "create"])
@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_bad_database_path_is_one_clear_error_and_leaves_no_thread(
    tmp_path: Path, case: str, create: bool
) -> None:
    make, error, needle = CASES[case]
    path = make(tmp_path / "shop.db")
    if case == "missing-directory" and not create:
        error, needle = errors.SchemaError, "does not exist"  # checked before any connection is made
    before = set(threading.enumerate())
    content = _content(path)

    with pytest.raises(error, match=needle) as caught:
        await SqliteStore.open(path, create=create)

    assert str(path) in caught.value.message
    assert "\n" not in caught.value.message
    assert await _left_running(before) == set()  # the connection's worker thread ended with it
    assert _content(path) == content
    assert _siblings(tmp_path) == []
