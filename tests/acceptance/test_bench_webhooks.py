"""`make bench-webhooks` (bench/webhooks.py) runs end to end, tiny: every webhook is answered and decided, every
invoice ends settled with one license, and the figures come from where they should (webhook_deliveries).

Nothing here times anything: the figures are checked for being measured, never for being fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.process import clean_env

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "webhooks.py"
IDLE, FLOOD = 5, 20


@pytest.mark.slow
def test_the_webhook_bench_licenses_every_invoice_and_measures_both_phases(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            f"--idle={IDLE}",
            f"--flood={FLOOD}",
            "--flood-seconds=0.5",
            "--latency-ms=1",
            f"--json={out}",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=REPO,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["problems"] == []
    assert report["outcome"] == {
        "statuses": {"settled": IDLE + FLOOD},
        "licenses": IDLE + FLOOD,
        "licensed_invoices": IDLE + FLOOD,
        "leased": 0,
    }
    for phase, count in (("idle", IDLE), ("flood", FLOOD)):
        result = report[phase]
        assert (result["webhooks"], result["undecided"], result["decisions"]) == (count, 0, {"settle": count})
        assert result["received_to_decided"]["n"] == result["answer"]["n"] == count
        assert 0 < result["received_to_decided"]["p50_ms"] <= result["received_to_decided"]["p99_ms"]
    assert report["idle"]["sent_to_decision_seen"]["n"] == IDLE
    assert sum(report["answers"].values()) == IDLE + FLOOD + report["redeliveries"]
    assert any(
        line.startswith("flood") and "received_to_decided" in line for line in done.stdout.splitlines()
    )
