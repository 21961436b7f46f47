"""The daemon as a systemd service (docs/cli.md §5): sd_notify, /metrics and health, logs, and the unit files.

The daemon tests run the real `reconciler run` in a subprocess against a seeded SQLite shop and the scripted
`fake` driver (see conftest.py). SIGTERM during a pass with slow provider calls is test_daemon_signals.py.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler import cli
from reconciler.config import DaemonSettings
from reconciler.notify import Notifier
from reconciler.timeutil import format_ts, parse_duration
from tests.acceptance.conftest import COMMAND, PENDING, SETTLED, Workspace, merged, recent
from tests.support.process import clean_env

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
#: Where the shipped units expect the console script (a virtual environment, docs/operations.md).
UNIT_EXEC = "/opt/reconciler/bin/reconciler"
DAEMON = {"reconcile": {"initial_delay": "0s", "interval": "1s"}}
WAIT = 30.0

Message = dict[str, str]


# -- helpers -------------------------------------------------------------------------------------------------
class Service:
    """`reconciler --config CONFIG ARGS... run` in a subprocess; a thread collects its stderr lines."""

    def __init__(self, config: Path, *args: str, env: Mapping[str, str]) -> None:
        self.proc = subprocess.Popen(
            [*COMMAND, "--config", str(config), *args, "run"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env),
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """The first stderr line matching `pattern`, waiting for it to appear."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.stderr}"
            time.sleep(0.02)
        pytest.fail(f"no line matching {pattern!r} within {timeout}s:\n{self.stderr}")

    def stop(self, timeout: float = WAIT) -> int:
        """SIGTERM, then the exit code once stderr is fully read."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = WAIT) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code


@pytest.fixture
def services() -> Iterator[list[Service]]:
    """Started services; whatever a failed test left running is killed."""
    started: list[Service] = []
    yield started
    for service in started:
        if service.proc.poll() is None:
            service.proc.kill()
            service.wait()


class NotifySocket:
    """A stand-in for systemd's `$NOTIFY_SOCKET`: a datagram socket collecting sd_notify messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[Message] = []

    def collect(self, until: Callable[[list[Message]], bool], timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not until(self.messages):
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"sd_notify messages so far: {self.messages}")
            self.sock.settimeout(left)
            try:
                self._take(self.sock.recv(4096))
            except TimeoutError:
                continue

    def drain(self) -> list[Message]:
        """Every message still queued, without waiting."""
        self.sock.setblocking(False)
        try:
            while True:
                self._take(self.sock.recv(4096))
        except BlockingIOError:
            return self.messages
        finally:
            self.sock.setblocking(True)

    def _take(self, datagram: bytes) -> None:
        fields = (line.partition("=") for line in datagram.decode().splitlines())
        self.messages.append({key: val for key, _, val in fields})

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.close()


def seed(ws: Workspace, **outcomes: dict[str, Any]) -> None:
    """One invoice per provider invoice id, created 5 minutes ago, and what the fake provider answers."""
    product = ws.shop.product()
    for provider_invoice_id in outcomes:
        ws.shop.invoice(product, provider_invoice_id=provider_invoice_id, created_at=recent(5))
    ws.answers({pid: [outcome] for pid, outcome in outcomes.items()})


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base: str) -> Samples:
    status, body = get(base + "metrics")
    assert status == 200, body
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape_until(base: str, ready: Callable[[Samples], bool], what: str) -> Samples:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        samples = scrape(base)
        if ready(samples):
            return samples
        time.sleep(0.05)
    pytest.fail(f"/metrics never showed {what}")


def after_first_pass(samples: Samples) -> bool:
    """The first pass finished and the backlog gauges refreshed after it are there."""
    return any(name == "reconciler_pending_invoices" for name, _ in samples)


# -- sd_notify -----------------------------------------------------------------------------------------------
def test_notify_ready_then_status_and_watchdog_then_stopping(
    workspace: Workspace, notify_socket: NotifySocket, services: list[Service]
) -> None:
    seed(workspace, S0=SETTLED, S1=SETTLED, P0=PENDING)
    env = clean_env() | {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"}
    service = Service(workspace.config(DAEMON), env=env)
    services.append(service)

    def passes(messages: list[Message]) -> list[int]:
        return [i for i, m in enumerate(messages) if m.get("STATUS", "").startswith("pass finished")]

    # two passes, then at least three watchdog pings after the first one
    notify_socket.collect(
        lambda ms: len(passes(ms)) >= 2 and sum("WATCHDOG" in m for m in ms[passes(ms)[0] :]) >= 3
    )
    assert service.stop() == 0, service.stderr
    notify_socket.collect(lambda ms: any("STOPPING" in m for m in ms))
    messages = notify_socket.drain()

    assert messages[0]["READY"] == "1"
    assert messages[0]["STATUS"].startswith("started: 1 provider(s)")
    assert sum("READY" in m for m in messages) == 1
    first = passes(messages)[0]
    assert "settle=2" in messages[first]["STATUS"]
    assert "no_change=1" in messages[first]["STATUS"]
    assert "nothing due" in messages[passes(messages)[1]]["STATUS"]
    assert all(m == {"WATCHDOG": "1"} for m in messages if "WATCHDOG" in m)
    assert any("WATCHDOG" in m for m in messages[1:first]), "no watchdog ping before the first status"
    stopping = [i for i, m in enumerate(messages) if "STOPPING" in m]
    assert len(stopping) == 1
    assert stopping[0] > first
    assert messages[stopping[0]] == {"STOPPING": "1", "STATUS": "stopping"}
    assert "stopped after" in service.stderr


def test_no_watchdog_pings_unless_systemd_asks_for_them(
    workspace: Workspace, notify_socket: NotifySocket, services: list[Service]
) -> None:
    seed(workspace, S0=SETTLED)
    env = clean_env() | {"NOTIFY_SOCKET": str(notify_socket.path)}
    service = Service(workspace.config(DAEMON), env=env)
    services.append(service)
    notify_socket.collect(lambda ms: sum("STATUS" in m and "READY" not in m for m in ms) >= 2)
    assert service.stop() == 0, service.stderr
    assert not [m for m in notify_socket.drain() if "WATCHDOG" in m]


def test_notify_reaches_an_abstract_socket_and_survives_a_missing_one(tmp_path: Path) -> None:
    name = f"reconciler-test-{uuid.uuid4()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.settimeout(WAIT)
    notifier = Notifier("@" + name)
    try:
        notifier.ready("started")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=started"
    finally:
        notifier.close()
        receiver.close()
    gone = Notifier(str(tmp_path / "gone"))
    gone.watchdog()  # systemd went away: logged at debug level, never raised
    gone.close()


@pytest.mark.parametrize("problem", ["unknown key", "missing database", "missing signing key"])
def test_a_startup_error_exits_2_without_any_notification(
    workspace: Workspace, notify_socket: NotifySocket, services: list[Service], problem: str
) -> None:
    overrides: dict[str, Any] = {
        "unknown key": {"reconcile": {"colour": "blue"}},
        "missing database": {"database": {"url": f"sqlite://{workspace.root / 'absent.db'}"}},
        "missing signing key": {"license": {"signing_key_file": str(workspace.root / "absent.pem")}},
    }[problem]
    env = clean_env() | {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"}
    service = Service(workspace.config(merged(DAEMON, overrides)), env=env)
    services.append(service)
    assert service.wait() == cli.EXIT_USAGE, service.stderr
    assert notify_socket.drain() == []


# -- metrics and health --------------------------------------------------------------------------------------
def test_metrics_after_a_pass_match_what_the_pass_did(workspace: Workspace, services: list[Service]) -> None:
    seed(
        workspace,
        S0=SETTLED,
        S1=SETTLED,
        S2=SETTLED,
        P0=PENDING,
        P1=PENDING,
        X0={"error": "unavailable"},
    )
    workspace.shop.invoice(workspace.shop.product("old"), created_at=datetime.now(UTC) - timedelta(days=4))
    config = workspace.config(
        {
            "reconcile": {"initial_delay": "0s", "interval": "1h"},
            "providers": {"fake": {"retry_attempts": 2, "retry_max_delay": "1s"}},
            "http": {"listen": "127.0.0.1:0"},
        }
    )
    started = time.time()
    service = Service(config, env=clean_env())
    services.append(service)
    base = service.wait_for(r"metrics and health on (http://127\.0\.0\.1:\d+/)").group(1)
    samples = scrape_until(base, after_first_pass, "a finished pass")

    def decisions(kind: str) -> float | None:
        return value(samples, "reconciler_decisions_total", provider="fake", kind=kind)

    settled = workspace.shop.scalar("SELECT count(*) FROM invoices WHERE status = 'settled'")
    pending = workspace.shop.scalar(
        "SELECT count(*) FROM invoices WHERE status = 'pending' AND payment_provider_id = 'fake'"
        " AND created_at >= ?",
        (format_ts(datetime.now(UTC) - timedelta(hours=72)),),
    )
    assert settled == 3
    assert decisions("settle") == settled
    assert decisions("no_change") == 2
    assert decisions("provider_error") == 1
    assert value(samples, "reconciler_provider_requests_total", provider="fake", outcome="ok") == 5
    # the unavailable invoice was tried retry_attempts times
    assert value(samples, "reconciler_provider_requests_total", provider="fake", outcome="unavailable") == 2
    assert value(samples, "reconciler_provider_request_seconds_count", provider="fake") == 7
    assert pending == 3
    assert value(samples, "reconciler_pending_invoices", provider="fake") == pending
    oldest = value(samples, "reconciler_oldest_pending_age_seconds", provider="fake")
    assert oldest is not None and 5 * 60 <= oldest < 10 * 60
    assert value(samples, "reconciler_pending_not_checked_invoices") == 1
    assert value(samples, "reconciler_pass_duration_seconds_count") == 1
    assert value(samples, "reconciler_passes_total", result="ok") == 1
    assert value(samples, "reconciler_circuit_open", provider="fake") == 0
    last_pass = value(samples, "reconciler_last_pass_timestamp_seconds")
    assert last_pass is not None and started <= last_pass <= time.time()
    assert get(base + "healthz") == (200, "idle between passes\n")
    assert get(base + "readyz") == (200, "database reachable, 1 driver(s) loaded\n")

    # a second schema_meta row makes the database "not ours": not ready, but the loop is still alive
    workspace.shop.execute("INSERT INTO schema_meta (version) VALUES (1)")
    status, body = get(base + "readyz")
    assert status == 503
    assert body.startswith("database: schema_meta does not hold exactly one version row")
    assert get(base + "healthz")[0] == 200
    assert service.stop() == 0, service.stderr


def test_pending_gauges_follow_the_backlog_down_to_zero(
    workspace: Workspace, services: list[Service]
) -> None:
    """A label that disappears from the backlog (here NULL-provider invoices, "-") drops to 0."""
    product = workspace.shop.product()
    workspace.shop.invoice(product, provider=None, provider_invoice_id="N0", created_at=recent(5))
    workspace.answers({"N0": [PENDING, SETTLED]})
    config = workspace.config(
        {
            "default_provider": "fake",
            "reconcile": {"initial_delay": "0s", "interval": "1s", "schedule": ["1s", "1s", "1s", "1s"]},
            "http": {"listen": "127.0.0.1:0"},
        }
    )
    service = Service(config, env=clean_env())
    services.append(service)
    base = service.wait_for(r"metrics and health on (http://127\.0\.0\.1:\d+/)").group(1)
    first = scrape_until(base, after_first_pass, "a finished pass")
    assert value(first, "reconciler_pending_invoices", provider="-") == 1
    after = scrape_until(
        base, lambda s: value(s, "reconciler_pending_invoices", provider="-") == 0, "the backlog gone"
    )
    assert workspace.shop.scalar("SELECT status FROM invoices") == "settled"
    assert value(after, "reconciler_pending_invoices", provider="-") == 0
    assert value(after, "reconciler_oldest_pending_age_seconds", provider="-") == 0
    assert value(after, "reconciler_decisions_total", provider="fake", kind="settle") == 1
    assert service.stop() == 0, service.stderr


# -- logs ----------------------------------------------------------------------------------------------------
SECRETS = ("btcpay-secret-5f0c0f6e-0c8e", "zaprite-secret-9a1d44b2-77f3")


def secret_workspace(ws: Workspace) -> tuple[Path, dict[str, str]]:
    """A config like the systemd unit's: a BTCPay key inline, a Zaprite key and the signing key as systemd
    credentials (`$CREDENTIALS_DIRECTORY`), both providers unreachable so every fetch fails."""
    credentials = ws.root / "credentials"
    credentials.mkdir()
    (credentials / "zaprite").write_text(SECRETS[1] + "\n")
    shutil.copy(ws.key, credentials / "signing-key")
    product = ws.shop.product()
    for provider in ("fake", "shop_btcpay", "shop_zaprite"):
        ws.shop.invoice(product, provider=provider, created_at=recent(5))
    ws.answers({"*": [SETTLED]})
    unreachable = {"base_url": "http://127.0.0.1:9", "timeout": "2s", "retry_attempts": 1}
    config = ws.config(
        {
            "reconcile": {"initial_delay": "0s", "interval": "1s"},
            "log": {"level": "DEBUG"},
            "license": {"signing_key_file": str(ws.root / "not-this-one.pem")},
            "providers": {
                "shop_btcpay": {"driver": "btcpay", "store_id": "Store1", "api_key": SECRETS[0]}
                | unreachable,
                "shop_zaprite": {"driver": "zaprite", "api_key_file": "zaprite"} | unreachable,
            },
        }
    )
    env = clean_env() | {
        "CREDENTIALS_DIRECTORY": str(credentials),
        "RECONCILER_LICENSE__SIGNING_KEY_FILE": str(credentials / "signing-key"),
    }
    return config, env


@pytest.mark.parametrize("log_format", ["human", "json", "journal"])
def test_a_full_run_logs_no_secret(workspace: Workspace, services: list[Service], log_format: str) -> None:
    config, env = secret_workspace(workspace)
    if log_format == "journal":
        env["JOURNAL_STREAM"] = "8:12345"  # what systemd sets: `auto` becomes journal
        service = Service(config, env=env)
    else:
        service = Service(config, "--log-format", log_format, env=env)
    services.append(service)
    service.wait_for("DEGRADED")
    service.wait_for("pass finished")
    assert service.stop() == 0, service.stderr
    checked = subprocess.run(
        [*COMMAND, "--config", str(config), "check-config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=WAIT,
    )
    assert checked.returncode == 0, checked.stderr

    assert workspace.shop.scalar("SELECT count(*) FROM licenses") == 1  # the fake provider's invoice
    output = service.stderr + checked.stdout + checked.stderr
    assert "shop_btcpay" in service.stderr and "shop_zaprite" in service.stderr
    for secret in SECRETS:
        assert secret not in output
    lines = service.lines
    assert len(lines) >= 5
    if log_format == "json":
        for line in lines:
            record = json.loads(line)
            assert set(record) >= {"time", "level", "message"}, line
            datetime.fromisoformat(record["time"])
        assert any(json.loads(line)["level"] == "WARNING" for line in lines)
    elif log_format == "journal":
        assert all(re.match(r"<[0-7]>\S", line) for line in lines), service.stderr
        assert any(line.startswith("<4>pass finished") for line in lines)
        assert any(line.startswith("<6>reconciler") for line in lines)
    else:
        assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ", line) for line in lines)


# -- the systemd units ---------------------------------------------------------------------------------------
def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> every value assigned (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, val = line.partition("=")
        current.setdefault(key, []).append(val)
    return sections


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    console_script = Path(sys.executable).with_name("reconciler")
    assert console_script.exists(), "install the package (pip install -e .) so the console script exists"
    copies = []
    for source in sorted(UNITS.iterdir()):
        text = source.read_text()
        copy = tmp_path / source.name
        copy.write_text(text.replace(UNIT_EXEC, str(console_script)))
        copies.append(str(copy))
    assert len(copies) == 3
    done = subprocess.run(
        [analyze, "verify", *copies], capture_output=True, text=True, cwd=tmp_path, timeout=WAIT
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_the_service_unit_matches_the_daemon() -> None:
    service = unit("reconciler.service")["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecStart"] == [f"{UNIT_EXEC} --config /etc/reconciler/config.toml run"]
    assert service["RestartPreventExitStatus"] == [str(cli.EXIT_USAGE)]
    assert service["Restart"] == ["on-failure"]
    assert parse_duration(service["TimeoutStopSec"][0]) > DaemonSettings().shutdown_grace
    assert service["WatchdogSec"] == ["3min"]  # docs/operations.md explains it against the lease
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "MemoryDenyWriteExecute"):
        assert service[key] == ["yes"], key
    assert service["ProtectSystem"] == ["strict"]
    assert service["StateDirectory"] == ["reconciler"]
    assert "@system-service" in service["SystemCallFilter"]
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]


def test_the_once_unit_fails_on_a_degraded_pass_and_the_timer_starts_it() -> None:
    once = unit("reconciler-once.service")["Service"]
    assert once["Type"] == ["oneshot"]
    assert once["ExecStart"] == [f"{UNIT_EXEC} --config /etc/reconciler/config.toml run --once"]
    assert "SuccessExitStatus" not in once  # exit 75 must fail the unit so OnFailure= alerting sees it
    timer = unit("reconciler-once.timer")
    assert timer["Timer"]["Unit"] == ["reconciler-once.service"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]


@pytest.mark.parametrize("name", ["reconciler.service", "reconciler-once.service"])
def test_every_credential_the_example_config_names_is_loaded(name: str) -> None:
    """A `*_file` is a credential name (no "/") or this unit's credential path; the signing key is one too."""
    service = unit(name)["Service"]
    loaded = {spec.split(":", 1)[0] for spec in service["LoadCredential"]}
    example = tomllib.loads((REPO / "config.example.toml").read_text())
    for section in example["providers"].values():
        for key, val in section.items():
            if key.endswith("_file"):
                credential = val.removeprefix(f"/run/credentials/{name}/")
                assert "/" not in credential and credential in loaded, (key, val)
    environment = dict(e.split("=", 1) for e in service["Environment"])
    assert environment["RECONCILER_LICENSE__SIGNING_KEY_FILE"] == "%d/signing-key"
    assert "signing-key" in loaded


# -- MemoryDenyWriteExecute= -----------------------------------------------------------------------------------
# prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN) (Linux >= 6.3) is the policy MemoryDenyWriteExecute=yes sets up
# with seccomp: no mapping may be writable and executable. It survives execve, so the wrapper execs argv[1:].
_MDWE = """
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(99)
os.execv(sys.argv[1], sys.argv[1:])
"""
_WX_PROBE = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"


def test_a_pass_runs_with_memory_deny_write_execute(workspace: Workspace) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux only")
    probe = subprocess.run(
        [sys.executable, "-c", _MDWE, sys.executable, "-c", _WX_PROBE], capture_output=True, timeout=WAIT
    )
    if probe.returncode == 99:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux >= 6.3)")
    assert probe.returncode != 0 and b"PermissionError" in probe.stderr, "the policy is not enforced"
    seed(workspace, S0=SETTLED, P0=PENDING)
    done = subprocess.run(
        [sys.executable, "-c", _MDWE, *COMMAND, "--config", str(workspace.config()), "--once"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=WAIT,
    )
    assert done.returncode == 0, done.stderr
    assert workspace.shop.scalar("SELECT count(*) FROM licenses") == 1


# -- alerts that fire the first time (issue 10) ----------------------------------------------------------------
def test_every_alerted_series_is_scraped_at_zero_before_the_first_pass(
    workspace: Workspace, services: list[Service]
) -> None:
    """`increase(...) > 0` needs a 0 sample before the first event: the series exist from start-up."""
    seed(workspace, P0=PENDING)
    config = workspace.config(
        {"reconcile": {"initial_delay": "1h"}, "http": {"listen": "127.0.0.1:0"}},
    )
    service = Service(config, env=clean_env())
    services.append(service)
    base = service.wait_for(r"metrics and health on (http://127\.0\.0\.1:\d+/)").group(1)
    samples = scrape(base)
    assert value(samples, "reconciler_pass_duration_seconds_count") == 0
    assert value(samples, "reconciler_passes_total", result="degraded") == 0
    assert value(samples, "reconciler_passes_total", result="ok") == 0
    for provider in ("fake", "-"):
        for kind in ("issue_failed", "not_found", "bad_response", "unreadable", "duplicate", "fenced"):
            assert value(samples, "reconciler_decisions_total", provider=provider, kind=kind) == 0, kind
        assert value(samples, "reconciler_post_settle_tasks_total", provider=provider, status="failed") == 0
    for outcome in ("ok", "unavailable", "auth_error", "not_found", "bad_response", "error"):
        assert value(samples, "reconciler_provider_requests_total", provider="fake", outcome=outcome) == 0
    assert value(samples, "reconciler_circuit_open", provider="fake") == 0
    assert service.stop() == 0, service.stderr


def test_review_items_after_a_pass_count_the_open_items(
    workspace: Workspace, services: list[Service]
) -> None:
    seed(workspace, N0={"error": "not_found"}, S0=SETTLED)
    config = workspace.config(
        {"reconcile": {"initial_delay": "0s", "interval": "1h"}, "http": {"listen": "127.0.0.1:0"}},
    )
    service = Service(config, env=clean_env())
    services.append(service)
    base = service.wait_for(r"metrics and health on (http://127\.0\.0\.1:\d+/)").group(1)
    samples = scrape_until(base, after_first_pass, "a finished pass")
    opened = workspace.shop.scalar(
        "SELECT count(*) FROM review_items WHERE kind = 'invoice.provider_not_found' AND status = 'open'"
    )
    assert opened == 1
    assert value(samples, "reconciler_review_items", action="invoice.provider_not_found") == opened
    assert value(samples, "reconciler_decisions_total", provider="fake", kind="not_found") == 1
    for action in ("invoice.unreadable", "invoice.duplicate", "license.issue_failed", "post_settle.failed"):
        assert value(samples, "reconciler_review_items", action=action) == 0, action
    assert service.stop() == 0, service.stderr


def test_refused_credentials_stay_visible_until_a_request_to_the_provider_succeeds(
    workspace: Workspace, notify_socket: NotifySocket, services: list[Service]
) -> None:
    seed(workspace, A0=PENDING)
    workspace.answers({"A0": [{"error": "auth"}, SETTLED]})
    config = workspace.config(
        {
            "reconcile": {"initial_delay": "0s", "interval": "1s", "schedule": ["6s", "6s", "6s", "6s"]},
            "http": {"listen": "127.0.0.1:0"},
        }
    )
    service = Service(config, env=clean_env() | {"NOTIFY_SOCKET": str(notify_socket.path)})
    services.append(service)
    base = service.wait_for(r"metrics and health on (http://127\.0\.0\.1:\d+/)").group(1)

    # the passes after the refusal have nothing due: the refusal must not vanish with them
    samples = scrape_until(
        base,
        lambda s: (
            (value(s, "reconciler_pass_duration_seconds_count") or 0) >= 2
            and value(s, "reconciler_decisions_total", provider="fake", kind="settle") == 0
        ),
        "a pass with nothing due after the refusal",
    )
    assert value(samples, "reconciler_passes_total", result="degraded") == 1
    assert value(samples, "reconciler_circuit_open", provider="fake") == 1
    assert value(samples, "reconciler_provider_credentials_refused", provider="fake") == 1
    status, body = get(base + "readyz")
    assert (status, body.startswith("credentials refused: fake: ")) == (503, True), body
    assert "scripted auth" in body
    notify_socket.collect(
        lambda ms: any(
            "nothing due" in m.get("STATUS", "") and "CREDENTIALS REFUSED(fake: " in m["STATUS"] for m in ms
        )
    )

    # the invoice comes due again, the provider answers: every sign of the refusal clears
    samples = scrape_until(
        base,
        lambda s: value(s, "reconciler_decisions_total", provider="fake", kind="settle") == 1,
        "the invoice settled",
    )
    assert value(samples, "reconciler_circuit_open", provider="fake") == 0
    assert value(samples, "reconciler_provider_credentials_refused", provider="fake") == 0
    assert get(base + "readyz") == (200, "database reachable, 1 driver(s) loaded\n")
    notify_socket.collect(lambda ms: "settle=1" in ms[-1].get("STATUS", ""))
    assert "REFUSED" not in notify_socket.messages[-1]["STATUS"]
    assert service.stop() == 0, service.stderr
