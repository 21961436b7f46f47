"""`make bench` (bench/pass.py) runs end to end on a small N: every variant reconciles every invoice, and
the figures come from where they should (the fake's own request count, each process's rusage).

Nothing here times anything: the figures are checked for being measured, never for being fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PG_URL, pg_connection
from tests.support.process import clean_env

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "pass.py"
COUNT = 50
LATENCY = 0.001
C = 64
RECONCILED = {"statuses": {"settled": COUNT}, "licenses": COUNT, "leased": 0, "unchecked": 0}


def run_bench(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            f"--invoices={COUNT}",
            "--latency-ms=1",
            "--runs=1",
            f"--json={out}",
            *args,
        ],
        capture_output=True,
        text=True,
        env=clean_env(**env),
        cwd=REPO,
        timeout=600,
        check=False,
    )
    return done, json.loads(out.read_text()) if out.exists() else None


def by_run(report: Any) -> dict[tuple[str, int], Any]:
    return {(r["variant"], r["instances"]): r for r in report["results"]}


def check_common(done: subprocess.CompletedProcess[str], report: Any) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["batching"] == "available"
    for result in report["results"]:
        summary, (run,) = result["summary"], result["runs"]
        assert summary["problems"] == [], result["label"]
        assert run["outcome"] == RECONCILED, result["label"]
        assert run["exit_codes"] == [0] * result["instances"]
        assert summary["wall_s"] > 0 and summary["cpu_ms_per_invoice"] > 0 and summary["peak_rss_mib"] > 10
        assert summary["net_cpu_ms_per_invoice"] is not None
        assert run["requests"] == sum(run["requests_by_route"].values()) >= 1
        assert any(
            line.split()[:1] == [str(COUNT)] and result["label"] in line for line in done.stdout.splitlines()
        )
    assert [r["runs"][0]["requests"] for r in report["empty_pass"]] == [0] * len(report["empty_pass"])

    results = by_run(report)
    original, unbatched, default = (
        results[("a", 1)]["runs"][0],
        results[("b", 1)]["runs"][0],
        results[("c", 1)],
    )
    # (a): one GET per invoice, one at a time, as the fake itself counted them
    assert (original["single_gets"], original["list_pages"], original["requests"]) == (COUNT, 0, COUNT)
    assert original["server_peak_in_flight"] == 1
    assert original["lower_bound_s"] == pytest.approx(COUNT * LATENCY / C, abs=1e-6)
    # (b): batching off is still one GET per invoice, but concurrent
    assert (unbatched["single_gets"], unbatched["list_pages"]) == (COUNT, 0)
    assert unbatched["requests_per_invoice"] == 1.0
    assert unbatched["server_peak_in_flight"] > 1
    if report["batching"] != "available":
        assert default["runs"][0]["single_gets"] == COUNT


@pytest.mark.slow
def test_the_bench_measures_all_three_variants_on_sqlite(tmp_path: Path) -> None:
    done, report = run_bench(tmp_path)

    check_common(done, report)
    assert sorted(by_run(report)) == [("a", 1), ("b", 1), ("c", 1)]
    assert report["database"] == "SQLite"
    for result in report["results"]:
        assert not Path(result["runs"][0]["database"]).exists()  # each run's copy is removed


@pytest.mark.slow
@pytest.mark.postgres
async def test_the_bench_on_postgresql_adds_instances_and_drops_its_schemas(tmp_path: Path) -> None:
    async with pg_connection() as (conn, _):
        done, report = run_bench(tmp_path, "--pg", "--instances", "2", RECONCILER_TEST_PG_URL=PG_URL)

        check_common(done, report)
        assert sorted(by_run(report)) == [("a", 1), ("b", 1), ("b", 2), ("c", 1)]
        assert report["database"] == "PostgreSQL"
        assert "2 instances reach" in done.stdout
        used = [r["runs"][0]["database"].removeprefix("schema ") for r in report["results"]]
        left = await conn.fetchval(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = ANY($1::text[])", used
        )
        assert len(set(used)) == 4 and left == 0
