"""The BTCPay driver is its own distribution, found only through its entry point (docs/drivers.md §1).

The core (`reconciler/`) imports no driver package, and drivers import nothing of the core but
`reconciler.driver_api`.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DRIVER_PACKAGES = ("reconciler_btcpay", "reconciler_zaprite")


def test_btcpay_is_a_separate_distribution_installed_from_drivers_btcpay() -> None:
    dist = metadata.distribution("reconciler-btcpay")

    (entry,) = [e for e in dist.entry_points if e.group == "reconciler.drivers"]
    assert (entry.name, entry.value) == ("btcpay", "reconciler_btcpay:BTCPayDriver")
    origin = json.loads(dist.read_text("direct_url.json") or "{}")
    assert origin["url"] == (ROOT / "drivers" / "btcpay").as_uri()
    assert metadata.packages_distributions()["reconciler_btcpay"] == ["reconciler-btcpay"]
    assert any(r.startswith("invoice-reconciler") for r in dist.requires or [])
    core_requires = metadata.distribution("invoice-reconciler").requires or []
    assert not any(r.startswith(("reconciler-btcpay", "reconciler_btcpay")) for r in core_requires)


def test_the_core_loads_the_driver_only_through_its_entry_point() -> None:
    probe = """
import importlib, json, pkgutil, sys
import reconciler
for module in pkgutil.walk_packages(reconciler.__path__, "reconciler."):
    if not module.name.endswith(".__main__"):  # would run the CLI
        importlib.import_module(module.name)
before = sorted(m for m in sys.modules if m.startswith(("reconciler_btcpay", "reconciler_zaprite")))
from reconciler import registry
driver = registry.load("btcpay")
print(json.dumps({"before": before, "file": sys.modules[driver.__module__].__file__}))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(done.stdout)
    assert result["before"] == []
    assert Path(result["file"]).resolve().is_relative_to(ROOT / "drivers" / "btcpay" / "reconciler_btcpay")


def test_reconciler_drivers_lists_btcpay_with_its_distribution_and_version() -> None:
    script = Path(sys.executable).with_name("reconciler")
    done = subprocess.run([str(script), "drivers"], capture_output=True, text=True, timeout=60, check=True)

    lines = {line.split()[0]: line.split() for line in done.stdout.splitlines()}
    assert lines["btcpay"][:3] == ["btcpay", "reconciler-btcpay", metadata.version("reconciler-btcpay")]
    assert "(reconciler_btcpay:BTCPayDriver)" in lines["btcpay"]


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every module name `path` imports (statements, and string literals given to import functions)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield from ((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def _sources(folder: Path) -> list[Path]:
    files = sorted(folder.rglob("*.py"))
    assert files, folder
    return files


def test_no_core_module_imports_a_driver_package() -> None:
    offending = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _sources(ROOT / "reconciler")
        for line, name in _imports(path)
        if name.split(".")[0] in DRIVER_PACKAGES
    ]
    assert offending == []


@pytest.mark.parametrize("package", DRIVER_PACKAGES)
def test_drivers_import_only_the_driver_api_of_the_core(package: str) -> None:
    folder = ROOT / "drivers" / package.removeprefix("reconciler_") / package
    offending = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _sources(folder)
        for line, name in _imports(path)
        if name.split(".")[0] == "reconciler" and name.partition(".")[2].split(".")[0] != "driver_api"
    ]
    assert offending == []
