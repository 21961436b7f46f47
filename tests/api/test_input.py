"""Untrusted input at the door: bad parameters, malformed or oversized bodies, SQL metacharacters, the
failure limiter, pages; each refusal a 4xx with a clear message, and nothing changed."""

from __future__ import annotations

import io
import json
import urllib.parse
from datetime import timedelta
from typing import Any

import pytest

from reconciler.api import auth
from tests.api.harness import MASTER, PAID_LATE, Live, live_api
from tests.store.backends import Backend

SQL = [
    "' OR '1'='1",
    "1; DROP TABLE invoices; --",
    '"; DELETE FROM api_keys; --',
    "%",
    "_",
    "\\",
    "' UNION SELECT",
]


async def get(live: Live, path: str, token: str = MASTER) -> tuple[int, Any]:
    async with live.client.get(path, headers=live.auth(token)) as response:
        return response.status, await response.json()


async def post(
    live: Live, path: str, data: bytes | str | io.BytesIO, *, content_type: str = "application/json"
) -> tuple[int, Any]:
    headers = {**live.auth(MASTER), "Content-Type": content_type}
    async with live.client.post(path, data=data, headers=headers) as response:
        return response.status, await response.json()


async def counts(live: Live) -> tuple[Any, ...]:
    return tuple(
        [
            await live.backend.scalar(f"SELECT count(*) FROM {table}")
            for table in ("invoices", "api_keys", "audit_log")
        ]
    )


@pytest.mark.parametrize("text", SQL)
async def test_sql_metacharacters_in_every_parameter_are_only_text(both: Backend, text: str) -> None:
    async with live_api(both) as live:
        before = await counts(live)
        quoted = urllib.parse.quote(text, safe="")
        assert (await get(live, f"/api/v1/invoices/{quoted}"))[0] == 404
        assert (await get(live, f"/api/v1/audit/{quoted}/{quoted}")) == (
            200,
            {"items": [], "next_cursor": None},
        )
        assert (await get(live, f"/api/v1/invoices?provider={quoted}")) == (
            200,
            {"items": [], "next_cursor": None},
        )
        assert (await get(live, f"/api/v1/reviews?kind={quoted}")) == (
            200,
            {"items": [], "next_cursor": None},
        )
        assert (await get(live, f"/api/v1/invoices?status={quoted}"))[0] == 400
        assert (await get(live, f"/api/v1/invoices?min_age={quoted}"))[0] == 400
        assert (await get(live, f"/api/v1/invoices?cursor={quoted}"))[0] == 400
        assert (await get(live, f"/api/v1/invoices?limit={quoted}"))[0] == 400
        async with live.client.delete(f"/api/v1/api-keys/{quoted}", headers=live.auth(MASTER)) as response:
            assert response.status == 404
        status, body = await post(
            live,
            "/api/v1/api-keys",
            json.dumps({"role": "support", "label": text}),
        )
        assert status == 201 and body["key"]["label"] == text
        invoices, keys, audits = await counts(live)
        # the one new key, audited once (the unknown key's DELETE wrote nothing); the text stays text
        assert (invoices, keys, audits) == (before[0], before[1] + 1, before[2] + 1)
        (made,) = await live.backend.raw.rows(
            "SELECT actor, details FROM audit_log WHERE action = 'api_key.created' AND target_id = :k",
            {"k": body["key"]["id"]},
        )
        assert made["actor"] == "api-key:master" and json.loads(made["details"])["label"] == text


@pytest.mark.parametrize(
    ("data", "content_type", "status", "needle"),
    [
        (b"{not json", "application/json", 400, "not JSON"),
        (b'["a list"]', "application/json", 400, "JSON object"),
        (b'{"role": "support", "label": "x"', "application/json", 400, "not JSON"),
        (b'{"role": "support", "label": "x"}', "text/plain", 400, "application/json"),
        (b'{"role": "root", "label": "x"}', "application/json", 400, "role: one of"),
        (b'{"role": "support", "label": ""}', "application/json", 400, "label"),
        (b'{"role": "support", "label": "   "}', "application/json", 400, "label"),
        (b'{"role": "support", "label": "a\\u0000b"}', "application/json", 400, "control characters"),
        (b'{"role": "support", "label": "\\ud800"}', "application/json", 400, "surrogate"),
        (b'{"role": "support", "label": "x", "admin": true}', "application/json", 400, "unknown field"),
        (b'{"role": "support", "label": "' + b"x" * 201 + b'"}', "application/json", 400, "at most 200"),
        (
            b'{"role": "support", "label": "' + b"x" * 70_000 + b'"}',
            "application/json",
            413,
            "max_body_bytes",
        ),
        (b"[" * 100 + b"]" * 100, "application/json", 400, "nested deeper"),
    ],
)
async def test_bad_bodies_are_refused_and_change_nothing(
    backend: Backend, data: bytes, content_type: str, status: int, needle: str
) -> None:
    async with live_api(backend) as live:
        before = await counts(live)
        got, body = await post(live, "/api/v1/api-keys", data, content_type=content_type)
        assert got == status, body
        assert needle in body["error"]["message"]
        assert await counts(live) == before


async def test_a_ten_megabyte_body_is_refused_before_it_is_read(backend: Backend) -> None:
    async with live_api(backend) as live:
        before = await counts(live)
        reason = io.BytesIO(b'{"role": "support", "label": "' + b"x" * 10_000_000 + b'"}')
        got, body = await post(live, "/api/v1/api-keys", reason)
        assert got == 413 and "65536 bytes" in body["error"]["message"]
        assert await counts(live) == before


async def test_unknown_routes_ids_and_parameters(backend: Backend) -> None:
    async with live_api(backend) as live:
        assert (await get(live, "/api/v1/nothing"))[0] == 404
        assert (await get(live, "/api/v1/invoices/unknown-id"))[1]["error"]["code"] == "not-found"
        status, body = await get(live, "/api/v1/invoices?colour=red")
        assert status == 400 and "unknown query parameter" in body["error"]["message"]
        assert (await get(live, "/api/v1/invoices?status=pending&status=settled"))[0] == 400
        assert (await get(live, "/api/v1/invoices?limit=0"))[0] == 400
        assert (await get(live, "/api/v1/invoices?limit=1001"))[0] == 400
        assert (await get(live, "/api/v1/invoices?min_age=99999d"))[0] == 400
        async with live.client.put("/api/v1/invoices", headers=live.auth(MASTER)) as response:
            assert response.status == 405 and (await response.json())["error"]["code"] == "method-not-allowed"


async def test_pages_follow_their_cursor_to_the_end_without_repeats(both: Backend) -> None:
    async with live_api(both, max_page=1) as live:
        seen: list[str] = []
        path = "/api/v1/invoices?limit=5"
        while True:
            status, body = await get(live, path)
            assert status == 200 and len(body["items"]) <= 1  # max_page clamps the limit
            seen += [item["id"] for item in body["items"]]
            if body["next_cursor"] is None:
                break
            path = f"/api/v1/invoices?limit=5&cursor={body['next_cursor']}"
        assert seen == [live.seeded.settled_id, live.seeded.invoice_id]  # newest first
        status, body = await get(live, "/api/v1/invoices?status=expired&provider=fake&min_age=1h&max_age=3h")
        assert [item["id"] for item in body["items"]] == [live.seeded.invoice_id]
        status, body = await get(live, "/api/v1/invoices?max_age=1h")
        assert body["items"] == []


async def test_one_invoice_shows_its_row_license_audit_and_decision(both: Backend) -> None:
    async with live_api(both) as live:
        status, body = await get(live, f"/api/v1/invoices/{live.seeded.settled_id}")
        assert status == 200
        assert body["license"]["id"] == live.seeded.license_id
        assert body["invoice"]["has_license"] is True
        live.driver.script(f"p-{live.seeded.invoice_id}", PAID_LATE)
        before = await counts(live)
        status, body = await get(live, f"/api/v1/invoices/{live.seeded.invoice_id}")
        assert [row["id"] for row in body["audit"]["items"]] == [live.seeded.audit_id]
        assert body["license"] is None
        assert body["decision"]["invoice_id"] == live.seeded.invoice_id
        assert body["decision"]["raw_status"] == "Expired"
        assert live.driver.calls == [f"p-{live.seeded.invoice_id}"]
        assert await counts(live) == before  # a dry run: nothing written
        status, body = await get(live, "/api/v1/reviews")
        assert [item["id"] for item in body["items"]] == [live.seeded.review_id]


async def test_failed_authentications_from_one_address_are_slowed_down(backend: Backend) -> None:
    async with live_api(backend, max_failures=3) as live:
        for _ in range(3):
            assert (await get(live, "/api/v1/invoices", "rk_" + "B" * 43))[0] == 401
        async with live.client.get("/api/v1/invoices", headers=live.auth(MASTER)) as response:
            assert response.status == 429
            assert int(response.headers["Retry-After"]) >= 1
            assert "retry after" in (await response.json())["error"]["message"]


def test_the_failure_table_is_bounded_and_forgets_old_failures() -> None:
    limiter = auth.FailureLimiter(max_failures=2, window=60, max_addresses=100)
    for n in range(1000):
        limiter.failed(f"10.0.{n // 256}.{n % 256}", 0.0)
    assert len(limiter) == 100
    limiter.failed("a", 0.0)
    assert limiter.retry_after("a", 1.0) is None
    limiter.failed("a", 1.0)
    assert limiter.retry_after("a", 2.0) == pytest.approx(58.0)
    assert limiter.retry_after("a", 61.0) is None  # the first failure left the window


async def test_last_used_is_written_at_most_once_a_minute(backend: Backend) -> None:
    async with live_api(backend) as live:
        key_id, token = live.key_ids["read-only"], live.tokens["read-only"]
        clock = live.server.clock
        assert (await get(live, "/api/v1/reviews", token))[0] == 200
        first = await live.backend.scalar("SELECT last_used_at FROM api_keys WHERE id = :id", {"id": key_id})
        clock.now += timedelta(seconds=30)  # type: ignore[attr-defined]
        assert (await get(live, "/api/v1/reviews", token))[0] == 200
        assert (
            await live.backend.scalar("SELECT last_used_at FROM api_keys WHERE id = :id", {"id": key_id})
            == first
        )
        assert first is not None
