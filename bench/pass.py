"""`make bench`: one reconcile pass over N due invoices, measured three ways on copies of one database.

    .venv/bin/python bench/pass.py [--invoices N ...] [--large] [--latency-ms 20] [--concurrency 64]
        [--max-concurrency C] [--runs R] [--mix settled|mixed] [--variants a b c] [--pg] [--instances K ...]
        [--json PATH]

For each N (default 1,000 and 10,000; `--large` adds 100,000) it seeds N due invoices (bench/world.py)
into a fresh SQLite file, or with `--pg` into a PostgreSQL schema of its own ($RECONCILER_TEST_PG_URL,
default postgresql://postgres@127.0.0.1:5432/test; dropped afterwards), and starts the project's fake
BTCPay in its own process on loopback (bench/fake_server.py): `latency` on every request, at most
`concurrency` (C) requests handled at once. Then, each run on its own copy of the database:

    (a) the original algorithm (bench/original.py): sequential, one GET per invoice
    (b) `reconciler --once` with `[providers.btcpay] batch = false` (single GETs)
    (c) `reconciler --once` with batching on (the default `batch = true`: BTCPay's list read page by page)

and with `--pg` also (b) run by K instances at once on one schema (default K = 4), where the provider is
the limit. Each figure is the median of 3 runs for N <= 10,000 (one run above; `--runs` overrides), the
runs of the variants interleaved so a busy machine hurts them alike (the project's packages byte-compiled
first, as an installed release is). Per variant: the process's wall time (start-up included) and the pass's own, invoices/s, the ratio of the wall time to the lower bound
(list pages × L + single GETs × L / C, counted by the fake: N·L/C without batching), HTTP requests per
invoice (every request the fake answered), CPU ms per invoice (user + sys of the measured processes, from
wait4; "net" less the CPU of an empty pass of the same variant, run once first), their peak RSS, and the
fake's own CPU seconds (close to the wall time, the fake was the limit). A run that does not end with every invoice reconciled (right statuses, one
license per settle, nothing left leased or unchecked) is reported as such and makes the exit status 1;
the figures never do: speed is a benchmark, not a test.

Prints a table and writes the JSON (default bench/out/pass-<db>-<UTC time>.json).
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from bench import world  # noqa: E402
from reconciler import licenses  # noqa: E402
from tests.support.process import clean_env  # noqa: E402

PG_URL = os.environ.get("RECONCILER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SINGLE_ROUTE = "/api/v1/stores/{storeId}/invoices/{invoiceId}"
LIST_ROUTE = "/api/v1/stores/{storeId}/invoices"
LABELS = {
    "a": "(a) original, sequential",
    "b": "(b) --once, batch = false",
    "c": "(c) --once, batching on",
}


def label_of(variant: str, instances: int) -> str:
    return LABELS[variant] if instances == 1 else f"(b) batch = false, {instances} instances"


_PASS_LINE = re.compile(r"pass finished in ([0-9.]+)s: (.*)")


# --- processes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measured:
    """One process: exit code, wall time from the start of the group, CPU and peak RSS (wait4)."""

    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    stdout: Path
    stderr: Path
    timed_out: bool


def measure(commands: Sequence[Sequence[str]], logs: Path, timeout: float) -> list[Measured]:
    """Start `commands` at once, wait for each with wait4 (its own rusage, not the children's maximum)."""
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[subprocess.Popen[bytes], Path, Path]] = []
    started = time.perf_counter()
    for n, argv in enumerate(commands):
        out, err = logs / f"{n}.stdout", logs / f"{n}.stderr"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            procs.append((subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=clean_env()), out, err))

    expired = threading.Event()

    def kill_all() -> None:
        expired.set()
        for proc, _, _ in procs:
            if proc.returncode is None:  # not reaped yet: the pid is still this child's
                os.kill(proc.pid, signal.SIGKILL)

    watchdog = threading.Timer(timeout, kill_all)
    watchdog.start()
    results = []
    try:
        for proc, out, err in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            results.append(
                Measured(
                    returncode=proc.returncode,
                    wall_s=time.perf_counter() - started,
                    cpu_s=usage.ru_utime + usage.ru_stime,
                    peak_rss_mib=usage.ru_maxrss / 1024,  # KiB on Linux
                    stdout=out,
                    stderr=err,
                    timed_out=expired.is_set(),
                )
            )
    finally:
        watchdog.cancel()
        if len(results) < len(procs):  # interrupted
            kill_all()
    return results


class Fake:
    """bench/fake_server.py in its own process; `counts()` reads (and resets) what it served."""

    def __init__(self, count: int, now: int, args: argparse.Namespace) -> None:
        command = [
            sys.executable,
            str(ROOT / "bench" / "fake_server.py"),
            f"--invoices={count}",
            f"--now={now}",
            f"--mix={args.mix}",
            f"--latency-ms={args.latency_ms}",
            f"--concurrency={args.concurrency}",
        ]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, env=clean_env())
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 300)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise SystemExit("bench: the fake BTCPay server did not start")
        announced = json.loads(line)
        self.base_url: str = announced["base_url"]
        self.control_url: str = announced["control_url"]

    def counts(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.control_url}/counts?reset=1", timeout=60) as response:
            body: dict[str, Any] = json.load(response)
        return body

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- databases -------------------------------------------------------------------------------------


class Sqlite:
    """A template file seeded once per N; every run gets a byte-for-byte copy."""

    kind = "SQLite"

    def __init__(self, work: Path, planned: Sequence[world.Planned], now: int) -> None:
        self.template = work / "template.db"
        world.sqlite_template(self.template, planned, now)

    def fresh(self, run_dir: Path) -> str:
        shutil.copyfile(self.template, run_dir / "shop.db")
        return f"sqlite://{run_dir / 'shop.db'}"

    def outcome(self, url: str) -> dict[str, Any]:
        import sqlite3

        db = sqlite3.connect(url.removeprefix("sqlite://"))
        try:
            return _outcome([tuple(r) for r in db.execute(_OUTCOME_SQL).fetchall()])
        finally:
            db.close()

    def describe(self, url: str) -> str:
        return url.removeprefix("sqlite://")

    def discard(self, url: str) -> None:
        path = Path(url.removeprefix("sqlite://"))
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)


class Postgres:
    """A schema of its own per run, seeded with the same rows; dropped after the run."""

    kind = "PostgreSQL"

    def __init__(self, planned: Sequence[world.Planned], now: int) -> None:
        self.planned = planned
        self.now = now
        self.schemas: dict[str, str] = {}

    @staticmethod
    async def _connect() -> Any:
        import asyncpg

        return await asyncpg.connect(PG_URL, timeout=10)

    def fresh(self, run_dir: Path) -> str:
        schema = f"bench_{uuid.uuid4().hex[:12]}"

        async def seed() -> None:
            conn = await self._connect()
            try:
                await world.pg_seed(conn, schema, self.planned, self.now)
            finally:
                await conn.close()

        asyncio.run(seed())
        url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}search_path={schema}"
        self.schemas[url] = schema
        return url

    def outcome(self, url: str) -> dict[str, Any]:
        async def read() -> list[tuple[Any, ...]]:
            conn = await self._connect()
            try:
                await conn.execute(f"SET search_path TO {self.schemas[url]}")
                return [tuple(r) for r in await conn.fetch(_OUTCOME_SQL)]
            finally:
                await conn.close()

        return _outcome(asyncio.run(read()))

    def describe(self, url: str) -> str:
        return f"schema {self.schemas[url]}"

    def discard(self, url: str) -> None:
        async def drop() -> None:
            conn = await self._connect()
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {self.schemas.pop(url)} CASCADE")
            finally:
                await conn.close()

        asyncio.run(drop())

    def close(self) -> None:
        for url in list(self.schemas):
            self.discard(url)


_OUTCOME_SQL = (
    "SELECT 'status:' || status, count(*) FROM invoices GROUP BY status"
    " UNION ALL SELECT 'licenses', count(*) FROM licenses"
    " UNION ALL SELECT 'leased', count(*) FROM invoices WHERE lease_token IS NOT NULL"
    " UNION ALL SELECT 'unchecked', count(*) FROM invoices WHERE status = 'pending' AND check_attempts = 0"
)


def _outcome(rows: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    found = {str(name): int(count) for name, count in rows}
    return {
        "statuses": {k.removeprefix("status:"): v for k, v in found.items() if k.startswith("status:")},
        "licenses": found.get("licenses", 0),
        "leased": found.get("leased", 0),
        "unchecked": found.get("unchecked", 0),
    }


def problems(
    variant: str, outcome: dict[str, Any], expected: dict[str, int], runs: list[Measured]
) -> list[str]:
    """What makes a run not a reconciled pass (its figures would mean nothing)."""
    found = [
        ("killed after the timeout" if m.timed_out else f"exit {m.returncode}") + _last_words(m)
        for m in runs
        if m.returncode != 0
    ]
    if outcome["statuses"] != expected:
        found.append(f"statuses {outcome['statuses']}, expected {expected}")
    if outcome["licenses"] != expected.get("settled", 0):
        found.append(f"{outcome['licenses']} licenses for {expected.get('settled', 0)} settles")
    if variant != "a" and outcome["leased"]:
        found.append(f"{outcome['leased']} invoices left leased")
    if variant != "a" and outcome["unchecked"]:
        found.append(f"{outcome['unchecked']} pending invoices never checked")
    return found


def _last_words(m: Measured) -> str:
    lines = [line for line in m.stderr.read_text(errors="replace").splitlines() if line.strip()]
    if not lines:
        return ""
    try:
        last = str(json.loads(lines[-1]).get("message", lines[-1]))
    except (ValueError, AttributeError):
        last = lines[-1]
    return f" ({last[:300]})"


# --- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Files:
    signing_key: Path
    api_key: Path


def reconciler_config(
    path: Path, url: str, base_url: str, files: Files, max_concurrency: int, batch_off: bool
) -> Path:
    provider = (
        f"[providers.{world.PROVIDER}]\n"
        f'driver = "btcpay"\nbase_url = "{base_url}"\nstore_id = "{world.STORE_ID}"\n'
        f'api_key_file = "{files.api_key}"\nmax_concurrency = {max_concurrency}\n'
    )
    if batch_off:
        provider += "batch = false\n"
    path.write_text(
        f'[database]\nurl = "{url}"\n[license]\nsigning_key_file = "{files.signing_key}"\n' + provider,
        encoding="utf-8",
    )
    return path


# --- runs ------------------------------------------------------------------------------------------


def pass_line(m: Measured) -> tuple[float | None, str | None]:
    """The pass's own duration and counts, from the reconciler's summary line or original.py's JSON."""
    for line in m.stdout.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"pass_s"' in line:
            found = json.loads(line)
            return float(found["pass_s"]), " ".join(f"{k}={v}" for k, v in sorted(found["counts"].items()))
    for line in m.stderr.read_text(errors="replace").splitlines():
        try:
            message = json.loads(line).get("message", "")
        except (ValueError, AttributeError):
            continue
        match = _PASS_LINE.match(message)
        if match:
            return float(match.group(1)), match.group(2)
    return None, None


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    files: Files

    def run(
        self,
        variant: str,
        instances: int,
        count: int,
        attempt: int,
        db: Sqlite | Postgres,
        fake: Fake,
        expected: dict[str, int],
    ) -> dict[str, Any]:
        run_dir = self.work / f"n{count}" / f"{variant}x{instances}-{attempt}"
        run_dir.mkdir(parents=True)
        url = db.fresh(run_dir)
        where = db.describe(url)
        try:
            if variant == "a":
                command = [
                    sys.executable,
                    str(ROOT / "bench" / "original.py"),
                    f"--database={url}",
                    f"--base-url={fake.base_url}",
                    f"--store-id={world.STORE_ID}",
                    f"--api-key-file={self.files.api_key}",
                    f"--signing-key-file={self.files.signing_key}",
                    f"--provider={world.PROVIDER}",
                ]
            else:
                config = reconciler_config(
                    run_dir / "config.toml",
                    url,
                    fake.base_url,
                    self.files,
                    self.args.max_concurrency or self.args.concurrency,
                    batch_off=variant == "b",
                )
                command = [
                    sys.executable,
                    "-m",
                    "reconciler",
                    "--config",
                    str(config),
                    "--log-format",
                    "json",
                    "--once",
                ]
                if self.args.profile and count:
                    svg = ROOT / "bench" / "out" / f"profile-{variant}-n{count}-{attempt}.txt"
                    svg.parent.mkdir(parents=True, exist_ok=True)
                    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
                    command = [
                        spy,
                        "record",
                        "--nonblocking",
                        "--rate",
                        "250",
                        "--format",
                        "raw",
                        "-o",
                        str(svg),
                        "--",
                        *command,
                    ]
            fake.counts()  # start counting afresh
            measured = measure([command] * instances, run_dir, self.timeout(count))
            served = fake.counts()
            outcome = db.outcome(url)
        finally:
            db.discard(url)
        wall = max(m.wall_s for m in measured)
        passes = [pass_line(m) for m in measured]
        durations = [d for d, _ in passes if d is not None]
        singles = served["by_route"].get(SINGLE_ROUTE, 0)
        pages = served["by_route"].get(LIST_ROUTE, 0)
        latency = self.args.latency_ms / 1000
        bound = pages * latency + singles * latency / self.args.concurrency
        found = problems(variant, outcome, expected, measured)
        return {
            "attempt": attempt,
            "database": where,
            "wall_s": round(wall, 3),
            "pass_s": round(max(durations), 3) if durations else None,
            "pass_counts": [c for _, c in passes],
            "invoices_per_s": round(count / wall, 1) if count else None,
            "lower_bound_s": round(bound, 6),
            "ratio_to_lower_bound": round(wall / bound, 2) if bound else None,
            "pass_ratio_to_lower_bound": round(max(durations) / bound, 2) if bound and durations else None,
            "requests": served["requests"],
            "requests_by_route": served["by_route"],
            "responses_by_status": served["by_status"],
            "requests_per_invoice": round(served["requests"] / count, 4) if count else None,
            "list_pages": pages,
            "single_gets": singles,
            "server_peak_in_flight": served["peak_in_flight"],
            "fake_cpu_s": served["cpu_s"],
            "cpu_s": round(sum(m.cpu_s for m in measured), 3),
            "cpu_ms_per_invoice": round(sum(m.cpu_s for m in measured) * 1000 / count, 3) if count else None,
            "peak_rss_mib": round(max(m.peak_rss_mib for m in measured), 1),
            "exit_codes": [m.returncode for m in measured],
            "outcome": outcome,
            "problems": found,
        }

    def timeout(self, count: int) -> float:
        given: float | None = self.args.timeout
        return given or 120 + 3 * count * (self.args.latency_ms / 1000 + 0.01)


def summarise(runs: list[dict[str, Any]], count: int, startup: dict[str, Any] | None) -> dict[str, Any]:
    """Medians over the runs (peak RSS: the largest), and the run whose wall time is the median; with the
    empty pass's figures (`startup`), the CPU a pass spends on its invoices."""

    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return statistics.median(values) if values else None

    middle = sorted(runs, key=lambda r: r["wall_s"])[(len(runs) - 1) // 2]
    cpu = median("cpu_s")
    net = None
    if startup is not None and count and cpu is not None:
        net = round(max(cpu - startup["cpu_s"], 0.0) * 1000 / count, 3)
    return {
        "wall_s": median("wall_s"),
        "pass_s": median("pass_s"),
        "invoices_per_s": median("invoices_per_s"),
        "ratio_to_lower_bound": median("ratio_to_lower_bound"),
        "pass_ratio_to_lower_bound": median("pass_ratio_to_lower_bound"),
        "lower_bound_s": middle["lower_bound_s"],
        "requests_per_invoice": median("requests_per_invoice"),
        "list_pages": middle["list_pages"],
        "single_gets": middle["single_gets"],
        "server_peak_in_flight": middle["server_peak_in_flight"],
        "cpu_s": cpu,
        "cpu_ms_per_invoice": median("cpu_ms_per_invoice"),
        "startup_cpu_s": None if startup is None else startup["cpu_s"],
        "net_cpu_ms_per_invoice": net,
        "fake_cpu_s": median("fake_cpu_s"),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "runs": len(runs),
        "problems": sorted({p for r in runs for p in r["problems"]}),
    }


# --- report ----------------------------------------------------------------------------------------

_COLUMNS = (
    ("N", 8),
    ("run", 30),
    ("wall s", 8),
    ("pass s", 8),
    ("inv/s", 8),
    ("x bound", 8),
    ("req/inv", 8),
    ("CPU ms/inv", 11),
    ("net CPU", 8),
    ("RSS MiB", 8),
    ("peak C", 7),
    ("fake CPU s", 10),
)


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "  ".join(
            name.rjust(width) if i != 1 else name.ljust(width) for i, (name, width) in enumerate(_COLUMNS)
        )
    ]
    for result in results:
        s = result["summary"]
        cells = (
            _cell(result["invoices"]),
            result["label"] + (" [FAILED]" if s["problems"] else ""),
            _cell(s["wall_s"]),
            _cell(s["pass_s"]),
            _cell(s["invoices_per_s"], 0),
            _cell(s["ratio_to_lower_bound"], 1),
            _cell(s["requests_per_invoice"], 3),
            _cell(s["cpu_ms_per_invoice"], 2),
            _cell(s["net_cpu_ms_per_invoice"], 2),
            _cell(s["peak_rss_mib"], 0),
            _cell(s["server_peak_in_flight"]),
            _cell(s["fake_cpu_s"]),
        )
        lines.append(
            "  ".join(
                c.ljust(w) if i == 1 else c.rjust(w)
                for i, (c, (_, w)) in enumerate(zip(cells, _COLUMNS, strict=True))
            )
        )
    return "\n".join(lines)


def comparisons(results: list[dict[str, Any]]) -> list[str]:
    by_key = {(r["invoices"], r["variant"], r["instances"]): r["summary"] for r in results}
    lines = []
    for count in sorted({r["invoices"] for r in results}):
        a, b, c = (by_key.get((count, v, 1)) for v in "abc")
        for name, other in (("b", b), ("c", c)):
            if a and other and other["wall_s"]:
                by_pass = (
                    f", by pass time {a['pass_s'] / other['pass_s']:.1f}x"
                    if a["pass_s"] and other["pass_s"]
                    else ""
                )
                lines.append(
                    f"N={count:,}: ({name}) vs (a): {a['wall_s'] / other['wall_s']:.1f}x faster by wall time"
                    + by_pass
                )
        for (n, variant, k), s in sorted(by_key.items()):
            if n == count and variant == "b" and k > 1 and b and b["invoices_per_s"] and s["invoices_per_s"]:
                by_pass = (
                    f" (by pass time {b['pass_s'] / s['pass_s']:.2f}x)" if b["pass_s"] and s["pass_s"] else ""
                )
                lines.append(
                    f"N={count:,}: {k} instances reach {s['invoices_per_s'] / b['invoices_per_s']:.2f}x"
                    f" the invoices/s of one{by_pass}"
                )
    return lines


# --- main ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/pass.py", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--invoices", type=int, nargs="+", metavar="N", help="default: 1000 10000")
    parser.add_argument("--large", action="store_true", help="add N = 100,000")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the fake's latency L (default 20)")
    parser.add_argument("--concurrency", type=int, default=64, help="the fake's cap C (default 64)")
    parser.add_argument("--max-concurrency", type=int, help="the reconciler's max_concurrency (default: C)")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3 for N <= 10,000, else 1)")
    parser.add_argument("--mix", choices=sorted(world.MIXES), default="settled", help="what BTCPay answers")
    parser.add_argument("--variants", nargs="+", choices=sorted(LABELS), default=sorted(LABELS))
    parser.add_argument(
        "--pg", action="store_true", help="PostgreSQL ($RECONCILER_TEST_PG_URL) instead of SQLite"
    )
    parser.add_argument(
        "--instances",
        type=int,
        nargs="*",
        metavar="K",
        help="also run (b) as K instances (default with --pg: 4)",
    )
    parser.add_argument("--timeout", type=float, help="seconds a process may take (default from N and L)")
    parser.add_argument("--json", type=Path, help="where to write the results (default bench/out/...)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run (b) and (c) under py-spy (pip install py-spy): collapsed stacks per run in bench/out/ (flamegraph.pl or speedscope read them);"
        " CPU figures then include py-spy's own",
    )
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.invoices or []) or args.concurrency < 1 or args.latency_ms < 0:
        parser.error("--invoices and --concurrency must be at least 1, --latency-ms at least 0")
    if args.instances is None:
        args.instances = [4] if args.pg else []
    if any(k < 2 for k in args.instances):
        parser.error("--instances counts are 2 or more (one instance is (b) itself)")
    return args


def header(args: argparse.Namespace, db_kind: str, speed: dict[str, float]) -> list[str]:
    mix = {
        "settled": "every invoice Settled and paid in full (a license each)",
        "mixed": "5/8 Settled, 1/8 Expired, 1/8 Invalid, 1/8 New",
    }[args.mix]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"bench/pass.py on {db_kind}: L = {args.latency_ms:g} ms, server cap C = {args.concurrency},"
        f" max_concurrency = {args.max_concurrency or args.concurrency}; {mix}",
        "(b): batch = false, one GET per invoice; (c): batch = true, due invoices read from list pages",
        f"host: {platform.node()}, {os.cpu_count()} CPUs, load average {load} at start; speed (lower is"
        f" faster): a fixed Python loop {speed['python_loop_ms']:g} ms, one Ed25519 signature"
        f" {speed['ed25519_sign_us']:g} us",
        "wall s: the process, start-up included; x bound: wall / (list pages x L + single GETs x L / C);"
        " net CPU: CPU ms/inv less an empty pass's; peak C: most requests the fake served at once;"
        " fake CPU s: the fake's own (near a core's worth of the wall time, the fake is the limit)",
    ]


def host_speed() -> dict[str, float]:
    """Two fixed workloads timed in this process (medians of 5), so figures from different machines, or from
    one machine on a slow day, can be told apart: these shared machines have differed by 1.8x in CPU speed.
    Lower is faster."""

    def loop() -> None:
        total = 0
        for i in range(300_000):
            total += i * i % 7

    key = Ed25519PrivateKey.generate()
    payload = bytes(90)  # about a LIC1 payload

    def sign() -> None:
        for _ in range(1_000):
            key.sign(payload)

    def median_s(work: Any) -> float:
        runs = []
        for _ in range(5):
            began = time.perf_counter()
            work()
            runs.append(time.perf_counter() - began)
        return statistics.median(runs)

    return {
        "python_loop_ms": round(median_s(loop) * 1e3, 1),
        "ed25519_sign_us": round(median_s(sign) * 1e3, 1),
    }


def precompile() -> None:
    """Byte-compile the project's packages, as an installed release is: a start-up must not compile them from
    source each run (as it would under PYTHONDONTWRITEBYTECODE), which is no figure of the pass."""
    for package in [ROOT / "reconciler", *sorted(ROOT.glob("drivers/*/reconciler_*"))]:
        compileall.compile_dir(package, quiet=1)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [*(args.invoices or [1_000, 10_000]), *([100_000] if args.large else [])]
    started = datetime.now(UTC)
    precompile()
    with tempfile.TemporaryDirectory(prefix="bench-pass-") as tmp:
        work = Path(tmp)
        files = Files(work / "signing-key.pem", work / "btcpay-api-key")
        licenses.write_new_key(files.signing_key)
        files.api_key.write_text(world.API_KEY, encoding="utf-8")
        db_kind = "PostgreSQL" if args.pg else "SQLite"
        speed = host_speed()
        for line in header(args, db_kind, speed):
            print(line, flush=True)
        bench = Bench(args, work, files)
        empty = measure_count(bench, 0, None)
        startup = {(r["variant"], r["instances"]): r["summary"] for r in empty}
        results: list[dict[str, Any]] = []
        for count in counts:
            results += measure_count(bench, count, startup)
            print(flush=True)
            print(table([r for r in results if r["invoices"] == count]), flush=True)
    if len(counts) > 1:
        print()
        print(table(results))
    for line in comparisons(results):
        print(line)
    failed = [r for r in empty + results if r["summary"]["problems"]]
    for result in failed:
        what = f"N={result['invoices']:,}" if result["invoices"] else "empty pass"
        print(f"FAILED {what} {result['label']}: {'; '.join(result['summary']['problems'])}")
    report = {
        "command": " ".join(["bench/pass.py", *(sys.argv[1:] if argv is None else argv)]),
        "started_at": started.isoformat(),
        "database": db_kind,
        "latency_ms": args.latency_ms,
        "server_concurrency": args.concurrency,
        "max_concurrency": args.max_concurrency or args.concurrency,
        "mix": args.mix,
        "batching": "available",
        "host": {
            "node": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            **speed,
        },
        "empty_pass": empty,
        "results": results,
        "comparisons": comparisons(results),
    }
    out = args.json or ROOT / "bench" / "out" / f"pass-{db_kind.lower()}-{started:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"results: {out}")
    return 1 if failed else 0


def measure_count(
    bench: Bench, count: int, startup: dict[tuple[str, int], dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """Every variant over `count` invoices; `count` 0 (`startup` None) is the empty pass, run once."""
    args = bench.args
    now = int(time.time())
    planned = world.plan(count, now, args.mix)
    expected = world.expected_statuses(planned)
    plans = [(v, 1) for v in args.variants] + [("b", k) for k in args.instances]
    runs = 1 if startup is None else args.runs or (3 if count <= 10_000 else 1)
    collected: dict[tuple[str, int], list[dict[str, Any]]] = {p: [] for p in plans}
    with _database(bench.work / f"n{count}", planned, now, args.pg) as db:
        fake = Fake(count, now, args)
        try:
            for attempt in range(1, runs + 1):
                for variant, instances in plans:
                    label = label_of(variant, instances)
                    what = f"N={count:,}" if count else "empty pass"
                    print(f"{what} {label}: run {attempt} of {runs} ...", end=" ", flush=True)
                    result = bench.run(variant, instances, count, attempt, db, fake, expected)
                    collected[(variant, instances)].append(result)
                    print(
                        f"{result['wall_s']:.2f} s, {result['requests']} requests"
                        + (f", PROBLEM: {'; '.join(result['problems'])}" if result["problems"] else ""),
                        flush=True,
                    )
        finally:
            fake.stop()
    return [
        {
            "invoices": count,
            "variant": variant,
            "instances": instances,
            "label": label_of(variant, instances),
            "expected": expected,
            "summary": summarise(
                collected[(variant, instances)],
                count,
                None if startup is None else startup[(variant, instances)],
            ),
            "runs": collected[(variant, instances)],
        }
        for variant, instances in plans
    ]


@contextmanager
def _database(
    work: Path, planned: Sequence[world.Planned], now: int, pg: bool
) -> Iterator[Sqlite | Postgres]:
    work.mkdir(parents=True, exist_ok=True)
    if not pg:
        yield Sqlite(work, planned, now)
        return
    db = Postgres(planned, now)
    try:
        yield db
    finally:
        db.close()


if __name__ == "__main__":
    sys.exit(main())
