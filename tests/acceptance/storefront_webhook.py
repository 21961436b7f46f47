"""A storefront's webhook handler, run as its own process by the race tests (plain sqlite3, no reconciler code).

    python storefront_webhook.py DB PLAN OUT SECONDS

PLAN is a JSON list of `[invoice_id, product_id, with_license]`. For each, in its own transaction, the handler
does what a storefront does on a "paid" webhook: `UPDATE invoices SET status = 'settled' ... WHERE status =
'pending'`, then (when `with_license`) inserts its own license `ON CONFLICT (invoice_id) DO NOTHING`. It
waits for the first reconciler pass to begin, then prefers invoices a reconciler holds a lease on right now (so
some writes land in the middle of a fetch) and takes the others one by one over SECONDS, so some land before a
reconciler sees them and some after. It
writes to OUT what happened: `flipped`, `flipped_while_leased`, `licensed` (invoice ids).
"""

from __future__ import annotations

import json
import random
import sqlite3
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def handle(
    db: sqlite3.Connection, invoice_id: str, product_id: str, with_license: bool
) -> tuple[bool, bool, bool]:
    """One webhook delivery: (flipped the status, the row was leased when flipped, inserted a license)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        (lease_token,) = db.execute("SELECT lease_token FROM invoices WHERE id = ?", (invoice_id,)).fetchone()
        now = stamp()
        flipped = (
            db.execute(
                "UPDATE invoices SET status = 'settled', settled_at = ?, updated_at = ? "
                "WHERE id = ? AND status = 'pending'",
                (now, now, invoice_id),
            ).rowcount
            == 1
        )
        licensed = False
        if with_license:
            licensed = (
                db.execute(
                    "INSERT INTO licenses (id, product_id, invoice_id, license_key, issued_at, metadata) "
                    "VALUES (?, ?, ?, 'WEBHOOK-KEY', ?, '{\"issued_by\": \"webhook\"}') "
                    "ON CONFLICT (invoice_id) DO NOTHING",
                    (str(uuid.uuid4()), product_id, invoice_id, now),
                ).rowcount
                == 1
            )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return flipped, flipped and lease_token is not None, licensed


def main(db_path: str, plan_path: str, out_path: str, seconds: str) -> None:
    plan = {
        invoice_id: (product_id, bool(with_license))
        for invoice_id, product_id, with_license in json.loads(Path(plan_path).read_text())
    }
    rng = random.Random(5)
    db = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 30000")
    result: dict[str, list[str]] = {"flipped": [], "flipped_while_leased": [], "licensed": []}
    # The race starts when the first reconciler begins its pass (python start-up takes a while under load).
    give_up = time.monotonic() + 30
    while (
        time.monotonic() < give_up
        and not db.execute("SELECT count(*) FROM reconciler_instances").fetchone()[0]
    ):
        time.sleep(0.005)
    start = time.monotonic()
    spacing = float(seconds) / max(len(plan), 1)
    remaining = list(plan)
    rng.shuffle(remaining)
    delivered = 0
    while remaining:
        leased = {
            row[0]
            for row in db.execute(
                "SELECT id FROM invoices WHERE lease_token IS NOT NULL AND status = 'pending'"
            )
        }
        batch = [i for i in remaining if i in leased][:3]
        spare = [i for i in remaining if i not in batch]
        if spare and time.monotonic() >= start + delivered * spacing:  # the others arrive evenly over SECONDS
            batch.append(spare[0])
        for invoice_id in batch:
            remaining.remove(invoice_id)
            delivered += 1
            flipped, while_leased, licensed = handle(db, invoice_id, *plan[invoice_id])
            for key, happened in (
                ("flipped", flipped),
                ("flipped_while_leased", while_leased),
                ("licensed", licensed),
            ):
                if happened:
                    result[key].append(invoice_id)
        time.sleep(0.002)
    db.close()
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
