"""Throughput of 1 vs N reconciler instances on one PostgreSQL database (issue #5).

    .venv/bin/python bench/instances_pg.py [--invoices 4000] [--latency 0.02] [--instances 1 4] [--runs 3]

Each run seeds a fresh schema with pending invoices, then starts the instances at once (`reconciler --once`
subprocesses with the test-only scripted driver answering after `latency` seconds, `--concurrency` requests
in flight per instance) and
measures the wall time until all have finished. Reports invoices per second (median of the runs) and the
ratio to one instance. Needs RECONCILER_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.pg_cluster import reconciler, search_path_url, seed, wait_all, write_config  # noqa: E402

PG_URL = os.environ.get("RECONCILER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def one_run(invoices: int, instances: int, latency: float, concurrency: int) -> float:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(PG_URL)
    await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.execute(f"SET search_path TO {schema}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = search_path_url(PG_URL, schema)
            config = write_config(
                Path(tmp), url, count=invoices, latency=latency, max_concurrency=concurrency
            )
            subprocess.run(
                [sys.executable, "-m", "reconciler", "--config", str(config), "init-db"],
                check=True,
                capture_output=True,
            )
            await seed(conn, invoices)
            started = time.perf_counter()
            results = wait_all([reconciler(config, "--once") for _ in range(instances)], timeout=1800)
            wall = time.perf_counter() - started
            for code, stderr in results:
                if code != 0:
                    raise SystemExit(f"an instance exited {code}:\n{stderr[-2000:]}")
            left = await conn.fetchval("SELECT count(*) FROM invoices WHERE check_attempts = 0")
            if left:
                raise SystemExit(f"{left} invoices were never checked")
            return invoices / wall
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--invoices", type=int, default=4000)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16, help="max_concurrency per instance")
    args = parser.parse_args()
    medians = {}
    for n in args.instances:
        rates = [await one_run(args.invoices, n, args.latency, args.concurrency) for _ in range(args.runs)]
        medians[n] = statistics.median(rates)
        print(
            f"instances={n} invoices={args.invoices} latency={args.latency}s concurrency={args.concurrency} "
            f"runs={args.runs} "
            f"invoices_per_s_median={medians[n]:.0f} (runs: {', '.join(f'{r:.0f}' for r in rates)})"
        )
    base = medians[args.instances[0]]
    for n, rate in medians.items():
        print(f"ratio {n}/{args.instances[0]} instances: {rate / base:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
