"""How the store package is cut (issue 11): modules of one job each, and what pure code builds lives outside it."""

from __future__ import annotations

import ast
from pathlib import Path

import reconciler

PACKAGE = Path(reconciler.__file__).parent
#: The size past which a module is doing more than one job (issue 11: "no module over ~350 lines").
MAX_LINES = 350


def test_no_store_module_is_over_the_limit() -> None:
    sizes = {
        path.name: len(path.read_text(encoding="utf-8").splitlines())
        for path in sorted((PACKAGE / "store").glob("*.py"))
    }
    assert {name: size for name, size in sizes.items() if size > MAX_LINES} == {}


def _imported(path: Path) -> set[str]:
    """The modules a file imports, as dotted names (`from a import b` counts as `a` and `a.b`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_settle_plan_is_built_without_the_store() -> None:
    """settlement.py plans a settle as a pure function: its drafts are models, not store types."""
    store = {name for name in _imported(PACKAGE / "settlement.py") if name.startswith("reconciler.store")}
    assert store == set()
