"""Peak RSS of one `reconciler --once` pass over many pending invoices (issue #2: < 150 MB at 50,000).

    .venv/bin/python bench/memory_once.py [--invoices 50000] [--batch-size 500] [--runs 3]

Seeds a SQLite file, runs the real command in a subprocess with the test-only scripted driver (entry point
`fake`: a mix of settled, expired and still-pending answers), and reports the child's peak RSS
(getrusage RUSAGE_CHILDREN, the figure `/usr/bin/time -v` prints as "Maximum resident set size") and the
pass's wall time, median over the runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconciler import licenses  # noqa: E402
from reconciler.store import queries  # noqa: E402
from reconciler.timeutil import format_ts  # noqa: E402
from tests.support.process import clean_env  # noqa: E402


def seed(path: Path, count: int) -> dict[str, list[dict[str, object]]]:
    now = datetime.now(UTC)
    product = str(uuid.uuid4())
    with sqlite3.connect(path) as db:
        db.executescript(queries.schema_sql())
        db.execute(
            "INSERT INTO products (id, slug, name, created_at) VALUES (?, 'app', 'App', ?)",
            (product, format_ts(now)),
        )
        rows = []
        for i in range(count):
            created = format_ts(now - timedelta(seconds=i % 86400))
            rows.append((str(uuid.uuid4()), f"B{i}", product, created, created))
        db.executemany(
            "INSERT INTO invoices (id, payment_provider_id, provider_invoice_id, product_id, amount_sats, created_at,"
            " updated_at) VALUES (?, 'fake', ?, ?, 10000, ?, ?)",
            rows,
        )
    # every 10th settles, every 10th (offset 5) expires, the rest stay pending
    script: dict[str, list[dict[str, object]]] = {"*": [{"status": "PENDING", "raw_status": "New"}]}
    for i in range(0, count, 10):
        script[f"B{i}"] = [
            {"status": "SETTLED", "raw_status": "Settled", "amount_sats": 10000, "currency": "BTC"}
        ]
        script[f"B{i + 5}"] = [{"status": "EXPIRED", "raw_status": "Expired"}]
    return script


def one_run(count: int, batch_size: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db = work / "shop.db"
        script = seed(db, count)
        (work / "script.json").write_text(json.dumps(script))
        key = work / "key.pem"
        licenses.write_new_key(key)
        (work / "config.toml").write_text(
            f'[database]\nurl = "sqlite://{db}"\n[license]\nsigning_key_file = "{key}"\n'
            f"[reconcile]\nbatch_size = {batch_size}\n"
            f'[providers.fake]\ndriver = "fake"\nscript_path = "{work / "script.json"}"\nmax_concurrency = 64\n'
        )
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "reconciler", "--config", str(work / "config.toml"), "--once"],
            capture_output=True,
            text=True,
            env=clean_env(),
            check=False,
        )
        wall = time.perf_counter() - started
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if proc.returncode != 0:
            raise SystemExit(f"reconciler exited {proc.returncode}:\n{proc.stderr[-2000:]}")
        settled = sqlite3.connect(db).execute("SELECT count(*) FROM licenses").fetchone()[0]
        assert settled == count // 10, settled
        if peak_kib <= before:
            print(
                "warning: this run's peak did not exceed an earlier child's; run with --runs 1 for a clean figure"
            )
        return peak_kib / 1024, wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--invoices", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    results = [one_run(args.invoices, args.batch_size) for _ in range(args.runs)]
    peaks = [p for p, _ in results]
    walls = [w for _, w in results]
    print(
        f"invoices={args.invoices} batch_size={args.batch_size} runs={args.runs} "
        f"peak_rss_mib_median={statistics.median(peaks):.1f} wall_s_median={statistics.median(walls):.2f} "
        f"invoices_per_s={args.invoices / statistics.median(walls):.0f}"
    )


if __name__ == "__main__":
    main()
