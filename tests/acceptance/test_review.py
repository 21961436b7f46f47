"""`reconciler review` and the review counts of `reconciler status` (docs/review.md, docs/cli.md §2.5, §2.10): the
real command after real passes; `status` counts open items only, `review` lists them oldest first with a
one-line summary, `--json` for scripts, `--limit`."""

from __future__ import annotations

import json

from tests.acceptance.conftest import Workspace, recent

PAID_LATE = {
    "status": "EXPIRED",
    "raw_status": "Expired",
    "raw_additional_status": "PaidLate",
    "paid_late": True,
    "amount_sats": 10_000,
}
WEIRD = {"status": "UNKNOWN", "raw_status": "Weird"}
#: a storefront's provider invoice id with a terminal escape in it: listed safely
BAD = "BAD\x1b[31m"


def _seed(ws: Workspace) -> dict[str, str]:
    shop = ws.shop
    product = shop.product()
    ids = {
        name: shop.invoice(product, provider_invoice_id=name, created_at=recent(30 - n))
        for n, name in enumerate(("LOST", "LATE", "ODD", BAD))
    }
    ws.answers(
        {"LOST": [{"error": "not_found"}], BAD: [{"error": "not_found"}], "LATE": [PAID_LATE], "ODD": [WEIRD]}
    )
    return ids


def test_review_lists_the_open_items_oldest_first(workspace: Workspace) -> None:
    ids = _seed(workspace)
    empty = workspace.run("review")
    assert (empty.returncode, empty.stdout) == (0, "nothing open for review\n"), empty
    assert workspace.run("--once").returncode == 0
    before = workspace.state()

    text = workspace.run("review")
    as_json = workspace.run("review", "--json")
    limited = workspace.run("review", "--json", "--limit", "2")

    assert text.returncode == 0 and as_json.returncode == 0 and limited.returncode == 0, (text, as_json)
    found = json.loads(as_json.stdout)
    assert found["more"] is False
    kinds = [(i["invoice_id"], i["kind"]) for i in found["items"]]
    assert sorted(kinds) == sorted(
        [
            (ids["LOST"], "invoice.provider_not_found"),
            (ids["LATE"], "invoice.paid_late"),
            (ids["ODD"], "invoice.unknown_status"),
            (ids[BAD], "invoice.provider_not_found"),
        ]
    )
    assert [i["opened_at"] for i in found["items"]] == sorted(i["opened_at"] for i in found["items"])
    late = next(i for i in found["items"] if i["kind"] == "invoice.paid_late")
    assert late["provider_id"] == "fake" and late["provider_invoice_id"] == "LATE"
    assert late["summary"] == "paid after it expired (Expired/PaidLate), paid_late = flag"
    assert set(late) == {
        "item_id",
        "invoice_id",
        "provider_id",
        "provider_invoice_id",
        "kind",
        "opened_at",
        "audit_id",
        "summary",
    }
    page = json.loads(limited.stdout)
    assert page["more"] is True and page["items"] == found["items"][:2]

    assert f"invoice.paid_late  invoice {ids['LATE']} (fake LATE)" in text.stdout
    assert "    paid after it expired (Expired/PaidLate), paid_late = flag" in text.stdout
    assert "    a status the driver does not know (Weird)" in text.stdout
    # the storefront's text cannot drive the terminal: its escape character is shown as `?`
    assert f"invoice.provider_not_found  invoice {ids[BAD]} (fake BAD?[31m)" in text.stdout
    assert "\x1b" not in text.stdout
    assert workspace.state() == before  # it only reads


def test_status_counts_open_items_only(workspace: Workspace) -> None:
    ids = _seed(workspace)
    assert workspace.run("--once").returncode == 0
    item = workspace.shop.scalar("SELECT id FROM review_items WHERE invoice_id = ?", (ids["LOST"],))
    workspace.shop.execute(
        "UPDATE review_items SET status = 'dismissed', closed_by = 'cli:test', closed_at = opened_at,"
        " close_reason = 'handled' WHERE id = ?",
        (item,),
    )

    report = json.loads(workspace.run("status", "--json").stdout)
    text = workspace.run("status").stdout

    counts = {r["action"]: r["count"] for r in report["review"]}
    assert counts == {"invoice.paid_late": 1, "invoice.unknown_status": 1, "invoice.provider_not_found": 1}
    assert all(r["oldest"] and r["latest"] for r in report["review"])
    assert "open for review (`reconciler review` lists them):\n  invoice.paid_late: 1 (oldest " in text
    # an audit row stays an audit row: the dismissed item's is still there
    audited = workspace.shop.scalar("SELECT count(*) FROM audit_log WHERE target_id = ?", (ids["LOST"],))
    assert audited == 1


def test_review_limit_must_be_a_positive_number(workspace: Workspace) -> None:
    outcome = workspace.run("review", "--limit", "0")
    assert outcome.returncode == 2 and "whole number from 1 to 100000" in outcome.stderr
