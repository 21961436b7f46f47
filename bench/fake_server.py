"""The project's fake BTCPay Server in a process of its own, for `bench/pass.py`.

    .venv/bin/python bench/fake_server.py --invoices N --now UNIX --mix settled --latency-ms 20 --concurrency 64

Serves the store of `bench/world.py`'s plan (the same invoices the bench seeds into the database) on
loopback with `latency` on every request and at most `concurrency` requests handled at once (the rest
queue, as on a small server). Prints one JSON line, `{"base_url": ..., "control_url": ...}`, and serves
until SIGTERM / SIGINT.

The request log only counts (a pass of 100,000 requests would otherwise keep every answer). A separate
listener, not counted, reports: `GET <control_url>/counts` answers the requests since the last reset by
route and status, the most handled at once and this process's CPU seconds; `?reset=1` starts afresh.
`POST <control_url>/pay` with `{"ids": [provider invoice id, ...]}` makes those invoices Settled and paid in
full from then on (bench/webhooks.py: a buyer pays, then BTCPay sends its webhook).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import SupportsIndex

from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import world  # noqa: E402
from tests.fakes.btcpay import Exchange, FakeBTCPay  # noqa: E402


class CountingLog(list[Exchange]):
    """A request log that keeps counts by route and status instead of the exchanges."""

    def __init__(self) -> None:
        super().__init__()
        self.by_route: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()

    def append(self, exchange: Exchange, /) -> None:
        self.by_route[exchange.route or exchange.path] += 1
        self.by_status["dropped" if exchange.status is None else str(exchange.status)] += 1

    def insert(self, index: SupportsIndex, exchange: Exchange, /) -> None:
        self.append(exchange)

    def reset(self) -> None:
        self.by_route.clear()
        self.by_status.clear()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Control:
    """The uncounted listener that reads and resets the fake's counters."""

    def __init__(self, fake: FakeBTCPay, log: CountingLog, planned: Sequence[world.Planned]) -> None:
        self.fake = fake
        self.log = log
        self.cpu_mark = _cpu_seconds()
        self.planned = {p.provider_invoice_id: p for p in planned}

    async def pay(self, request: web.Request) -> web.Response:
        ids = (await request.json())["ids"]
        self.fake.add(*(world.btcpay_invoice(replace(self.planned[i], outcome="settle")) for i in ids))
        return web.json_response({"paid": len(ids)})

    async def counts(self, request: web.Request) -> web.Response:
        body = {
            "requests": sum(self.log.by_route.values()),
            "by_route": dict(self.log.by_route),
            "by_status": dict(self.log.by_status),
            "peak_in_flight": self.fake.peak_in_flight,
            "cpu_s": round(_cpu_seconds() - self.cpu_mark, 4),
        }
        if request.query.get("reset") == "1":
            self.log.reset()
            self.fake.peak_in_flight = self.fake.in_flight
            self.cpu_mark = _cpu_seconds()
        return web.json_response(body)


async def serve(args: argparse.Namespace) -> None:
    fake = FakeBTCPay(store_id=world.STORE_ID, concurrency=args.concurrency)
    log = CountingLog()
    fake.log = log
    planned = world.plan(args.invoices, args.now, args.mix)
    fake.add(*(world.btcpay_invoice(p) for p in planned))
    if args.latency_ms > 0:
        fake.fault(latency=args.latency_ms / 1000)
    control = Control(fake, log, planned)
    app = web.Application()
    app.router.add_get("/counts", control.counts)
    app.router.add_post("/pay", control.pay)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    base_url = await fake.start("127.0.0.1", 0)
    print(json.dumps({"base_url": base_url, "control_url": f"http://{host}:{port}"}), flush=True)
    try:
        await stop.wait()
    finally:
        await fake.close()
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--invoices", type=int, required=True)
    parser.add_argument("--now", type=int, required=True, help="the plan's reference time (unix seconds)")
    parser.add_argument("--mix", choices=sorted(world.MIXES), default="settled")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=64, help="requests the server handles at once")
    args = parser.parse_args(argv)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
