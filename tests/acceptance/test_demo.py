"""`make demo` (`python -m demo`): runs on its own, names every decision, cleans up after itself."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.process import clean_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_the_reconciler_and_shows_its_decisions() -> None:
    env = clean_env()
    done = subprocess.run(
        [sys.executable, "-m", "demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    out = done.stdout
    assert len(out.splitlines()) < 80
    decisions = ("settle", "expire", "invalidate", "paid_late_flag", "recover", "renew", "no_change")
    table = out.split("pass 1:")[0]
    for decision in (*decisions, "not_found", "bad_response", "skipped"):
        assert re.search(rf"\s{decision}\s", table), decision
    summary = next(line for line in out.splitlines() if line.startswith("pass 1: pass finished"))
    for decision in decisions:
        assert f" {decision}=" in summary
    assert "licenses issued: 13" in out
    assert "invoice.amount_mismatch 1" in out
    assert "second pass, every invoice due again: nothing changed" in out
    workdir = re.search(r"work dir\s+(\S+)", out)
    assert workdir is not None
    assert not Path(workdir.group(1)).exists()
