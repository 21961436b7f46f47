"""The daemon under SIGTERM (docs/cli.md §5.1): stop claiming, let in-flight invoices finish within the grace
period (or cancel them and release their leases), exit 0."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler import licenses
from tests.support.process import clean_env
from tests.support.shop import Shop, create_schema


def start_daemon(
    tmp_path: Path, *, latency: float, grace: str, invoices: int
) -> tuple[subprocess.Popen[str], Shop]:
    db = tmp_path / "shop.db"
    create_schema(db)
    shop = Shop(db)
    product = shop.product()
    now = datetime.now(UTC)
    for i in range(invoices):
        shop.invoice(product, provider_invoice_id=f"P{i}", created_at=now - timedelta(minutes=5))
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"*": [{"status": "SETTLED", "raw_status": "Settled"}]}))
    key = tmp_path / "key.pem"
    licenses.write_new_key(key)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[database]\nurl = "sqlite://{db}"\n[license]\nsigning_key_file = "{key}"\n'
        f'[reconcile]\ninitial_delay = "0s"\ninterval = "1s"\nbatch_size = 2\n'
        f'[daemon]\nshutdown_grace = "{grace}"\n'
        f'[providers.fake]\ndriver = "fake"\nscript_path = "{script}"\nlatency = {latency}\nmax_concurrency = 2\n'
    )
    env = clean_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--config", str(config), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    return proc, shop


def wait_for_leases(shop: Shop, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if shop.scalar("SELECT count(*) FROM invoices WHERE lease_token IS NOT NULL"):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    pytest.fail("the daemon never claimed anything")


@pytest.mark.slow
def test_sigterm_lets_in_flight_invoices_finish(tmp_path: Path) -> None:
    proc, shop = start_daemon(tmp_path, latency=1.0, grace="20s", invoices=10)
    wait_for_leases(shop, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "SIGTERM" in stderr
    assert shop.scalar("SELECT count(*) FROM invoices WHERE lease_token IS NOT NULL") == 0
    settled = shop.scalar("SELECT count(*) FROM invoices WHERE status = 'settled'")
    # the claimed batch finished; the daemon then stopped claiming
    assert 2 <= settled < 10
    assert shop.scalar("SELECT count(*) FROM licenses") == settled


@pytest.mark.slow
def test_sigterm_past_the_grace_period_releases_the_leases(tmp_path: Path) -> None:
    proc, shop = start_daemon(tmp_path, latency=30.0, grace="1s", invoices=4)
    wait_for_leases(shop, proc)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert time.monotonic() - started < 10
    assert "grace" in stderr
    assert shop.scalar("SELECT count(*) FROM invoices WHERE lease_token IS NOT NULL") == 0
    assert shop.scalar("SELECT count(*) FROM invoices WHERE status = 'pending'") == 4
    assert shop.scalar("SELECT count(*) FROM audit_log") == 0
