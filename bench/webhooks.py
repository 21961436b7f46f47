"""`make bench-webhooks`: a webhook's arrival to its invoice's license committed, in a running daemon.

    .venv/bin/python bench/webhooks.py [--idle 200] [--flood 1000] [--flood-seconds 10] [--latency-ms 20]
        [--workers 4] [--intake 1000] [--json PATH]

Seeds `idle + flood` pending invoices (bench/world.py, mix `pending`) into a fresh SQLite file, starts the
project's fake BTCPay in its own process (bench/fake_server.py, `latency` on every request) and `reconciler
run` with `[webhooks]` on loopback and `initial_delay = "1h"` (no pass runs: whatever is decided, a webhook
decided it). For each invoice the bench pays it in the fake (`POST /pay`), then sends BTCPay's signed
`InvoiceSettled` webhook, in two phases:

    (i)  idle: one webhook at a time, the next once the previous one's decision is committed;
    (ii) flood: `flood` webhooks sent evenly over `flood-seconds`, each on its own connection, without
         waiting; a 503 is redelivered after its `Retry-After` as BTCPay would (same originalDeliveryId).

Per delivery it reads `webhook_deliveries`: `decided_at - received_at` is the daemon's own time from
recording the delivery to committing its decision (the settle transaction with its license; the worker
writes `decided_at` after it), and the bench's clock gives the answer time and, idle, the arrival to the
decision seen from outside (polled every 2 ms). p50 / p90 / p99 / max of each; every invoice must end
settled with one license (else the run is reported as a problem: its figures would mean nothing). The goal
of issue 14 is p50 <= 100 ms idle and p99 <= 1 s under the flood; the bench reports, it does not judge: it
exits 0 whatever the figures, 1 only on a problem. Prints a table and writes the JSON (default
bench/out/webhooks-sqlite-<UTC time>.json).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import importlib
import json
import platform
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import world  # noqa: E402
from reconciler import licenses  # noqa: E402
from reconciler.timeutil import parse_ts  # noqa: E402
from tests.support.process import clean_env  # noqa: E402


# bench/pass.py's fake BTCPay in its own process (`pass` is a keyword: no `from bench.pass import`)
class FakeServer(Protocol):
    base_url: str
    control_url: str

    def stop(self) -> None: ...


Fake: Callable[[int, int, argparse.Namespace], FakeServer] = importlib.import_module("bench.pass").Fake
SECRET = "bench-webhook-secret-0123456789"
LISTENING = re.compile(r"webhooks on (http://127\.0\.0\.1:\d+)/webhooks/")
POLL = 0.002


def body_of(planned: world.Planned, delivery_id: str, original: str) -> bytes:
    """BTCPay's `InvoiceSettled` for `planned` (docs/providers.md §4.1)."""
    return json.dumps(
        {
            "deliveryId": delivery_id,
            "webhookId": "bench",
            "originalDeliveryId": original,
            "isRedelivery": delivery_id != original,
            "type": "InvoiceSettled",
            "timestamp": int(time.time()),
            "storeId": world.STORE_ID,
            "invoiceId": planned.provider_invoice_id,
            "metadata": {},
        },
        indent=2,
    ).encode()


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    return {"n": len(ordered), "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "max_ms": at(1.0)}


class Daemon:
    """`reconciler run` on the bench's database; stderr kept in a file (read for the listener's URL)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self._err = log.open("wb")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("reconciler")), "--config", str(config), "run"],
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            env=clean_env(),
        )

    def url(self) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = LISTENING.search(self.log.read_text(errors="replace"))
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise SystemExit(f"bench: the daemon did not start:\n{self.log.read_text(errors='replace')}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._err.close()
        return code


class Bench:
    def __init__(self, args: argparse.Namespace, db: Path, url: str, fake: FakeServer) -> None:
        self.args = args
        self.db = db
        self.url = url
        self.fake = fake
        self.answers: dict[str, int] = {}
        self.redeliveries = 0

    def decided(self, originals: Sequence[str]) -> dict[str, tuple[str, str, str | None]]:
        """originalDeliveryId -> (received_at, decided_at, decision) of the deliveries decided so far."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            marks = ",".join("?" * len(originals))
            rows = conn.execute(
                "SELECT idempotency_key, received_at, decided_at, decision FROM webhook_deliveries"
                f" WHERE decided_at IS NOT NULL AND idempotency_key IN ({marks})",
                list(originals),
            ).fetchall()
        finally:
            conn.close()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    async def pay(self, session: aiohttp.ClientSession, planned: Sequence[world.Planned]) -> None:
        ids = [p.provider_invoice_id for p in planned]
        async with session.post(f"{self.fake.control_url}/pay", json={"ids": ids}) as response:
            response.raise_for_status()

    async def deliver(self, session: aiohttp.ClientSession, planned: world.Planned, original: str) -> float:
        """Send the webhook (redelivered after each 503); the seconds to its first answer."""
        delivery_id = original
        started = time.monotonic()
        first: float | None = None
        while True:
            body = body_of(planned, delivery_id, original)
            headers = {"Content-Type": "application/json", "BTCPay-Sig": sign(body)}
            async with session.post(
                f"{self.url}/webhooks/{world.PROVIDER}", data=body, headers=headers
            ) as answer:
                await answer.read()
                first = first if first is not None else time.monotonic() - started
                self.answers[str(answer.status)] = self.answers.get(str(answer.status), 0) + 1
                if answer.status != 503:
                    return first
                wait = float(answer.headers.get("Retry-After", "5"))
            await asyncio.sleep(wait)
            self.redeliveries += 1
            delivery_id = uuid.uuid4().hex

    async def idle(self, session: aiohttp.ClientSession, planned: Sequence[world.Planned]) -> dict[str, Any]:
        answered: list[float] = []
        observed: list[float] = []
        originals = []
        for p in planned:
            await self.pay(session, [p])
            original = uuid.uuid4().hex
            originals.append(original)
            started = time.monotonic()
            answered.append(await self.deliver(session, p, original))
            deadline = started + 30
            while not await asyncio.to_thread(self.decided, [original]):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(POLL)
            observed.append(time.monotonic() - started)
        return self.phase(originals, answered, observed=observed)

    async def flood(self, session: aiohttp.ClientSession, planned: Sequence[world.Planned]) -> dict[str, Any]:
        await self.pay(session, planned)
        spacing = self.args.flood_seconds / max(len(planned), 1)
        originals = [uuid.uuid4().hex for _ in planned]
        started = time.monotonic()

        async def one(index: int) -> float:
            await asyncio.sleep(max(0.0, started + index * spacing - time.monotonic()))
            return await self.deliver(session, planned[index], originals[index])

        answered = list(await asyncio.gather(*(one(i) for i in range(len(planned)))))
        sent_s = time.monotonic() - started
        deadline = time.monotonic() + 120
        while len(await asyncio.to_thread(self.decided, originals)) < len(originals):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        result = self.phase(originals, answered)
        result |= {"sent_in_s": round(sent_s, 2), "all_decided_after_s": round(time.monotonic() - started, 2)}
        return result

    def phase(
        self, originals: Sequence[str], answered: Sequence[float], *, observed: Sequence[float] = ()
    ) -> dict[str, Any]:
        decided = self.decided(originals)
        inside = [(parse_ts(d) - parse_ts(r)).total_seconds() for r, d, _ in decided.values()]
        decisions: dict[str, int] = {}
        for _, _, kind in decided.values():
            decisions[str(kind)] = decisions.get(str(kind), 0) + 1
        return {
            "webhooks": len(originals),
            "undecided": len(originals) - len(decided),
            "decisions": decisions,
            "received_to_decided": percentiles(inside),
            "answer": percentiles(answered),
            **({"sent_to_decision_seen": percentiles(observed)} if observed else {}),
        }


def write_config(work: Path, db: Path, fake: FakeServer, args: argparse.Namespace) -> Path:
    key = work / "signing-key.pem"
    licenses.write_new_key(key)
    config = work / "config.toml"
    config.write_text(
        f"""[database]
url = "sqlite://{db}"

[license]
signing_key_file = "{key}"

[reconcile]
initial_delay = "1h"

[webhooks]
listen = "127.0.0.1:0"
workers = {args.workers}
intake = {args.intake}

[providers.{world.PROVIDER}]
driver = "btcpay"
base_url = "{fake.base_url}"
store_id = "{world.STORE_ID}"
api_key = "{world.API_KEY}"
webhook_secret = "{SECRET}"
""",
        encoding="utf-8",
    )
    return config


def outcome(db: Path) -> dict[str, Any]:
    conn = sqlite3.connect(db)
    try:
        statuses = dict(conn.execute("SELECT status, count(*) FROM invoices GROUP BY status").fetchall())
        issued = conn.execute("SELECT count(*), count(DISTINCT invoice_id) FROM licenses").fetchone()
        leased = conn.execute("SELECT count(*) FROM invoices WHERE lease_token IS NOT NULL").fetchone()[0]
    finally:
        conn.close()
    return {"statuses": statuses, "licenses": issued[0], "licensed_invoices": issued[1], "leased": leased}


async def measure(args: argparse.Namespace, bench: Bench, planned: Sequence[world.Planned]) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    ) as session:
        idle = await bench.idle(session, planned[: args.idle])
        flood = await bench.flood(session, planned[args.idle :])
    return {"idle": idle, "flood": flood}


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{'phase':<7} {'webhooks':>8} {'measure':<24} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    ]
    for phase in ("idle", "flood"):
        result = report[phase]
        for measure_name in ("received_to_decided", "sent_to_decision_seen", "answer"):
            if measure_name not in result:
                continue
            p = result[measure_name]
            lines.append(
                f"{phase:<7} {result['webhooks']:>8} {measure_name:<24} "
                + " ".join(
                    f"{'-' if p[k] is None else p[k]:>8}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")
                )
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--idle", type=int, default=200, help="webhooks sent one at a time")
    parser.add_argument("--flood", type=int, default=1000, help="webhooks sent in --flood-seconds")
    parser.add_argument("--flood-seconds", type=float, default=10.0)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="of every fake BTCPay answer")
    parser.add_argument("--concurrency", type=int, default=64, help="requests the fake serves at once")
    parser.add_argument("--workers", type=int, default=4, help="[webhooks] workers")
    parser.add_argument("--intake", type=int, default=1000, help="[webhooks] intake")
    parser.add_argument("--json", type=Path, help="where to write the results (default bench/out/...)")
    args = parser.parse_args(argv)
    args.mix = "pending"
    started = datetime.now(UTC)
    now = int(time.time())
    count = args.idle + args.flood
    planned = world.plan(count, now, "pending")
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp:
        work = Path(tmp)
        db = work / "shop.db"
        world.sqlite_template(db, planned, now)
        fake = Fake(count, now, args)
        daemon: Daemon | None = None
        try:
            daemon = Daemon(write_config(work, db, fake, args), work / "daemon.log")
            bench = Bench(args, db, daemon.url(), fake)
            print(
                f"{count:,} pending invoices; idle: {args.idle} one at a time; flood: {args.flood} in "
                f"{args.flood_seconds:g} s; fake BTCPay {args.latency_ms:g} ms; {args.workers} workers",
                flush=True,
            )
            phases = asyncio.run(measure(args, bench, planned))
        finally:
            code = daemon.stop() if daemon is not None else None
            fake.stop()
        final = outcome(db)
    problems = []
    if code != 0:
        problems.append(f"the daemon exited {code}")
    if (
        final["statuses"].get("settled", 0) != count
        or final["licenses"] != count
        or final["licensed_invoices"] != count
    ):
        problems.append(f"not every invoice ended settled with one license: {final}")
    report = {
        "bench": "webhooks",
        "started": started.isoformat(),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "database": "SQLite",
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        **phases,
        "answers": bench.answers,
        "redeliveries": bench.redeliveries,
        "outcome": final,
        "problems": problems,
        "goal": {"idle_p50_ms": 100, "flood_p99_ms": 1000},
    }
    print(table(report))
    print(f"answers: {bench.answers}, redeliveries after a 503: {bench.redeliveries}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    out = args.json or ROOT / "bench" / "out" / f"webhooks-sqlite-{started:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"results: {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
