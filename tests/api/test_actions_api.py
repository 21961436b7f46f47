"""The actions over HTTP, on both engines: audited with the key's id (never its token), refusals mapped to
their codes with nothing changed."""

from __future__ import annotations

import io
from typing import Any

from tests.api.harness import PAID_LATE, Live, live_api
from tests.store.backends import Backend


async def post(live: Live, path: str, token: str, body: Any = None, raw: Any = None) -> tuple[int, Any]:
    headers = live.auth(token)
    if raw is not None:
        headers["Content-Type"] = "application/json"
    async with live.client.post(path, json=body, data=raw, headers=headers) as response:
        return response.status, await response.json()


async def state(live: Live) -> list[Any]:
    return [
        await live.backend.raw.rows(f"SELECT * FROM {table} ORDER BY 1")
        for table in (
            "invoices",
            "licenses",
            "review_items",
            "audit_log",
            "provider_controls",
            "post_settle_tasks",
        )
    ]


async def test_settle_over_http_is_audited_with_the_key_and_refused_the_second_time(both: Backend) -> None:
    async with live_api(both) as live:
        token, key_id = live.tokens["license-issuer"], live.key_ids["license-issuer"]
        iid = await live.invoice("expired", PAID_LATE)
        status, body = await post(
            live, f"/api/v1/invoices/{iid}/settle", token, {"reason": "paid 2 h late, fine"}
        )
        assert status == 200 and body["status"] == "settled" and body["license_id"]
        actors = await live.backend.raw.rows(
            "SELECT actor FROM audit_log WHERE target_id = :i AND action = 'invoice.settled'", {"i": iid}
        )
        assert actors == [{"actor": f"api-key:{key_id}"}]
        before = await state(live)
        status, body = await post(live, f"/api/v1/invoices/{iid}/settle", token, {"reason": "again"})
        assert status == 409, body
        assert await state(live) == before
        rows = await live.backend.raw.rows("SELECT actor, details FROM audit_log")
        assert all(token not in str(row) for row in rows)


async def test_refusals_have_their_codes_and_change_nothing(both: Backend) -> None:
    async with live_api(both) as live:
        token = live.tokens["full-admin"]
        iid = await live.invoice("expired", PAID_LATE)
        item = await live.review_item()
        before = await state(live)
        cases = [
            (f"/api/v1/invoices/{iid}/settle", {"reason": ""}, 422),
            (f"/api/v1/invoices/{iid}/settle", {"reason": "   "}, 422),
            (f"/api/v1/invoices/{iid}/settle", {"reason": "x" * 1001}, 422),
            (f"/api/v1/invoices/{iid}/settle", {"reason": "line\nbreak"}, 422),
            (f"/api/v1/invoices/{iid}/settle", {}, 400),
            (f"/api/v1/invoices/{iid}/settle", {"reason": 7}, 400),
            (f"/api/v1/invoices/{iid}/settle", {"reason": "ok", "force": True}, 400),
            ("/api/v1/invoices/no-such-invoice/settle", {"reason": "ok"}, 404),
            ("/api/v1/invoices/'; DROP TABLE invoices; --/recheck", None, 404),
            (f"/api/v1/reviews/{item}x/dismiss", {"reason": "ok"}, 404),
            (f"/api/v1/invoices/{iid}/tasks/capture/retry", None, 404),
            ("/api/v1/providers/nope/pause", None, 404),
            ("/api/v1/providers/fake/resume", None, 409),  # not paused
        ]
        for path, body, expected in cases:
            status, answer = await post(live, path, token, body)
            assert status == expected, (path, body, answer)
            assert answer["error"]["message"]
        status, answer = await post(
            live,
            f"/api/v1/invoices/{iid}/settle",
            token,
            raw=io.BytesIO(b'{"reason": "' + b"x" * 10_000_000 + b'"}'),
        )
        assert status == 413
        assert await state(live) == before


async def test_dismiss_pause_resume_retry_over_http(backend: Backend) -> None:
    async with live_api(backend) as live:
        token = live.tokens["full-admin"]
        item = await live.review_item()
        assert (await post(live, f"/api/v1/reviews/{item}/dismiss", token, {"reason": "refund was ours"}))[
            0
        ] == 200
        assert (await post(live, f"/api/v1/reviews/{item}/dismiss", token, {"reason": "again"}))[0] == 409
        assert (await post(live, "/api/v1/providers/fake/pause", token, {"reason": "maintenance"}))[0] == 200
        async with live.client.get("/api/v1/providers", headers=live.auth(token)) as response:
            (provider,) = (await response.json())["items"]
        assert provider["paused"] and provider["pause_reason"] == "maintenance"
        assert provider["paused_by"] == f"api-key:{live.key_ids['full-admin']}"
        assert (await post(live, "/api/v1/providers/fake/resume", token))[0] == 200
        iid = await live.failed_task()
        assert (await post(live, f"/api/v1/invoices/{iid}/tasks/capture/retry", token))[0] == 200
        assert (await post(live, f"/api/v1/invoices/{iid}/tasks/capture/retry", token))[0] == 409


async def test_without_the_reconciler_actions_are_unavailable(backend: Backend) -> None:
    async with live_api(backend, actions=False) as live:
        status, body = await post(
            live, f"/api/v1/invoices/{live.seeded.invoice_id}/recheck", live.tokens["support"]
        )
        assert status == 503 and body["error"]["code"] == "no-actions"
