"""What the real command line loads at start-up (CHANGELOG): a `--once` pass from a timer imports none of the
daemon's listeners, metrics, operator API or webhook intake, nor the other commands' modules; the daemon
imports each listener's module only when its section is configured; `--help` loads no command at all. The
modules a command loads are frozen out of the garbage collector's walks, and the collector is on for the work,
with its young generation at `cli.GC_YOUNG_THRESHOLD`.

Each case runs `cli.main` in a subprocess of its own to its end, then lists the modules it imported, so a
module imported late (by the pass, by a driver, by the store) counts too. No timing is asserted.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler import cli
from tests.acceptance.conftest import TIMEOUT, Workspace, recent
from tests.support.process import clean_env

#: `python -c` this with `OUT ARGS...`: the command line with ARGS, then as JSON in OUT its modules and the
#: state of the garbage collector.
LIST_MODULES = """
import gc, json, sys
from reconciler import cli
out, *args = sys.argv[1:]
code = cli.main(args)
with open(out, "w", encoding="utf-8") as listing:
    json.dump(
        {"modules": sorted(sys.modules), "gc": [gc.isenabled(), gc.get_freeze_count(), gc.get_threshold()[0]]},
        listing,
    )
raise SystemExit(code)
"""

#: Only a daemon with the section configured needs these.
HTTP_LISTENER = ("aiohttp.web", "reconciler.health")
API_LISTENER = (
    "reconciler.api.server",
    "reconciler.api.auth",
    "reconciler.api.openapi",
    "reconciler.operator",
)
WEBHOOK_LISTENER = ("reconciler.webhooks",)
DAEMON = ("reconciler.daemon", "reconciler.metrics", "reconciler.notify", "prometheus_client")
#: The other commands' modules (and what only they use): a pass or the daemon needs none of them.
OTHER_COMMANDS = (
    *(f"reconciler.commands.{name}" for name in ("desk", "hooks", "keys", "reports", "setup")),
    "reconciler.webhook_setup",
)


def loaded(names: Iterable[str], packages: Sequence[str]) -> list[str]:
    """The modules of `names` that are one of `packages` or inside one."""
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in packages))


@dataclass(frozen=True)
class Listing:
    """How a command ended, what it imported, whether the collector was on and how many objects it froze."""

    code: int
    stderr: str
    names: list[str]
    collecting: bool
    frozen: int
    young: int


def listing(out: Path, code: int, stderr: str) -> Listing:
    found = json.loads(out.read_text(encoding="utf-8"))
    collecting, frozen, young = found["gc"]
    return Listing(code, stderr, found["modules"], collecting, frozen, young)


def modules_of(tmp_path: Path, *args: str | Path) -> Listing:
    """Run the command line with `args` to its end."""
    out = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", LIST_MODULES, str(out), *map(str, args)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=TIMEOUT,
    )
    return listing(out, done.returncode, done.stderr)


@pytest.mark.parametrize("mode", [(), ("--dry-run",)], ids=["once", "dry-run"])
def test_a_one_shot_pass_imports_no_daemon_listener_or_other_command(
    workspace: Workspace, tmp_path: Path, mode: tuple[str, ...]
) -> None:
    invoice = workspace.shop.invoice(workspace.shop.product(), provider_invoice_id="P1", created_at=recent())

    found = modules_of(tmp_path, "--config", workspace.config(), "--once", *mode)

    assert found.code == 0, found.stderr
    assert "pass finished" in found.stderr
    if not mode:  # the pass did its work with what it loaded
        assert workspace.shop.invoice_row(invoice)["check_attempts"] == 1
    assert "reconciler.commands.run" in found.names and "reconciler.runner" in found.names
    never = HTTP_LISTENER + API_LISTENER + WEBHOOK_LISTENER + DAEMON + OTHER_COMMANDS
    assert loaded(found.names, never) == []
    assert found.collecting and found.frozen > 10_000
    assert (
        found.young == cli.GC_YOUNG_THRESHOLD > 700
    )  # a pass's in-flight objects are not walked over and over


@pytest.mark.parametrize(
    ("sections", "expected", "absent"),
    [
        ({}, (), HTTP_LISTENER + API_LISTENER + WEBHOOK_LISTENER),
        ({"http": {"listen": "127.0.0.1:0"}}, HTTP_LISTENER, API_LISTENER + WEBHOOK_LISTENER),
    ],
    ids=["no-listener", "http"],
)
def test_the_daemon_imports_a_listener_only_when_it_is_configured(
    workspace: Workspace,
    tmp_path: Path,
    sections: dict[str, object],
    expected: tuple[str, ...],
    absent: tuple[str, ...],
) -> None:
    config = workspace.config({"reconcile": {"initial_delay": "1h"}, **sections})
    out = tmp_path / "modules.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", LIST_MODULES, str(out), "--config", str(config), "run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # up to the line that says every listener asked for is listening
            seen.append(line)
            if " started: 1 provider(s)" in line:
                break
        else:
            pytest.fail("the daemon did not start:\n" + "".join(seen))
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    found = listing(out, proc.returncode, "".join(seen) + rest)
    assert found.code == 0, found.stderr
    assert [package for package in DAEMON + expected if package not in found.names] == []
    assert loaded(found.names, absent + OTHER_COMMANDS) == []
    assert found.collecting, "the daemon ran without the garbage collector"


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("run", "--help")], ids=" ".join)
def test_help_and_version_load_no_command(tmp_path: Path, args: tuple[str, ...]) -> None:
    found = modules_of(tmp_path, *args)

    assert found.code == 0, found.stderr
    assert (
        loaded(found.names, ("reconciler.commands.run", *OTHER_COMMANDS, "reconciler.app", "aiohttp")) == []
    )
