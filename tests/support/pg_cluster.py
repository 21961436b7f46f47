"""Helpers for multi-instance tests on PostgreSQL: seed a schema, run `reconciler` processes against it."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler import licenses
from reconciler.timeutil import format_ts
from tests.support.process import clean_env

OUTCOMES: dict[str, dict[str, Any]] = {
    "settle": {"status": "SETTLED", "raw_status": "Settled", "amount_sats": 1000, "currency": "BTC"},
    "expire": {"status": "EXPIRED", "raw_status": "Expired"},
    "invalidate": {"status": "INVALID", "raw_status": "Invalid"},
    "pending": {"status": "PENDING", "raw_status": "New"},
}


def planned(i: int) -> str:
    """What the provider says about invoice i: mostly settled, some expired, invalid or still pending."""
    return ("settle", "settle", "settle", "expire", "settle", "invalidate", "settle", "pending")[i % 8]


async def seed(conn: Any, count: int, *, recurring_every: int = 0) -> list[tuple[str, str]]:
    """`count` pending invoices created a minute ago; returns (invoice id, provider invoice id) pairs."""
    now = datetime.now(UTC)
    product = str(uuid.uuid4())
    await conn.execute(
        "INSERT INTO products (id, slug, name, created_at) VALUES ($1, 'app', 'App', $2)",
        product,
        format_ts(now),
    )
    policy = str(uuid.uuid4())
    await conn.execute(
        "INSERT INTO policies (id, product_id, slug, is_recurring, renewal_period_days, created_at)"
        " VALUES ($1, $2, 'sub', 1, 30, $3)",
        policy,
        product,
        format_ts(now),
    )
    rows = []
    created = format_ts(now - timedelta(minutes=1))
    for i in range(count):
        use_policy = policy if recurring_every and i % recurring_every == 0 else None
        rows.append((str(uuid.uuid4()), f"P{i}", product, use_policy, created))
    await conn.executemany(
        "INSERT INTO invoices (id, payment_provider_id, provider_invoice_id, product_id, policy_id, amount_sats,"
        " created_at, updated_at) VALUES ($1, 'fake', $2, $3, $4, 1000, $5, $5)",
        rows,
    )
    return [(r[0], r[1]) for r in rows]


def write_config(
    tmp_path: Path,
    url: str,
    *,
    count: int,
    latency: float,
    lease: str = "5m",
    fast_fail: bool = False,
    max_concurrency: int = 16,
) -> Path:
    """A config for the scripted `fake` driver answering `planned(i)` for `P<i>`.

    `fast_fail`: a 1 s timeout and no retries, so a short lease (≥ 2 s) is allowed.
    """
    script = {f"P{i}": [OUTCOMES[planned(i)]] for i in range(count)}
    (tmp_path / "script.json").write_text(json.dumps(script))
    key = tmp_path / "key.pem"
    if not key.exists():
        licenses.write_new_key(key)
    provider = f'[providers.fake]\ndriver = "fake"\nscript_path = "{tmp_path / "script.json"}"\n'
    provider += f"latency = {latency}\nmax_concurrency = {max_concurrency}\n"
    if fast_fail:
        provider += 'timeout = "1s"\nretry_attempts = 1\nretry_max_delay = "0s"\n'
    config = tmp_path / "config.toml"
    config.write_text(
        f'[database]\nurl = "{url}"\n[license]\nsigning_key_file = "{key}"\n'
        f'[reconcile]\nbatch_size = 50\nlease = "{lease}"\n' + provider
    )
    return config


def reconciler(config: Path, *args: str) -> subprocess.Popen[str]:
    env = clean_env()
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--config", str(config), "--log-format", "json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_all(procs: Sequence[subprocess.Popen[str]], timeout: float = 300) -> list[tuple[int, str]]:
    results = []
    for proc in procs:
        _, stderr = proc.communicate(timeout=timeout)
        results.append((proc.returncode, stderr))
    return results


def search_path_url(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"
